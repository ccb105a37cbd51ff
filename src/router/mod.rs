//! Which instance gets a request: model alias → deployments → instances.
//!
//! For now regions are tried strictly in failover order and instances inside a region
//! round-robin; health, drain, stickiness and power-of-two-choices come with the routing
//! work. The router also owns each instance's in-flight count and enforces
//! `max_concurrency`. It does no I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::domain::{Instance, Model, Region};

/// One instance and its live counters.
#[derive(Debug)]
pub struct InstanceState {
    pub region: String,
    pub instance: Instance,
    in_flight: AtomicU32,
}

impl InstanceState {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a concurrency slot, or `None` when the instance is at `max_concurrency`.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlight> {
        let max = self.instance.max_concurrency;
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight {
                instance: self.clone(),
            })
    }
}

/// A held concurrency slot; released on drop, wherever the request ends.
#[derive(Debug)]
pub struct InFlight {
    instance: Arc<InstanceState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.instance.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

struct RegionState {
    name: String,
    instances: Vec<Arc<InstanceState>>,
    /// Instance indexes, each repeated `weight` times: the weighted round-robin wheel.
    wheel: Vec<usize>,
    /// Position on the wheel.
    next: AtomicUsize,
}

/// A place to send one attempt.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub instance: Arc<InstanceState>,
    /// The model name this region's upstream knows the alias by.
    pub upstream_model: String,
}

pub struct Router {
    regions: Vec<RegionState>,
}

impl Router {
    /// `regions` must already be in failover order, as `Config` keeps them.
    pub fn new(regions: &[Region]) -> Router {
        let regions = regions
            .iter()
            .map(|r| RegionState {
                name: r.name.clone(),
                instances: r
                    .instances
                    .iter()
                    .map(|i| {
                        Arc::new(InstanceState {
                            region: r.name.clone(),
                            instance: i.clone(),
                            in_flight: AtomicU32::new(0),
                        })
                    })
                    .collect(),
                wheel: r
                    .instances
                    .iter()
                    .enumerate()
                    .flat_map(|(i, inst)| std::iter::repeat_n(i, inst.weight as usize))
                    .collect(),
                next: AtomicUsize::new(0),
            })
            .collect();
        Router { regions }
    }

    /// Every instance that may serve `model`, best first: regions in failover order, and
    /// inside a region each instance once, the first picked by weighted round-robin.
    pub fn candidates(&self, model: &Model) -> Vec<Candidate> {
        let mut out = Vec::new();
        for deployment in &model.deployments {
            let Some(region) = self.regions.iter().find(|r| r.name == deployment.region) else {
                continue;
            };
            let n = region.instances.len();
            let turn = region.next.fetch_add(1, Ordering::Relaxed);
            let start = region.wheel[turn % region.wheel.len()];
            out.extend((0..n).map(|i| Candidate {
                instance: region.instances[(start + i) % n].clone(),
                upstream_model: deployment.upstream_model.clone(),
            }));
        }
        out
    }

    pub fn instances(&self) -> impl Iterator<Item = &Arc<InstanceState>> {
        self.regions.iter().flat_map(|r| &r.instances)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Deployment, Dialect, ModelKind};

    fn instance(name: &str, max: u32) -> Instance {
        Instance {
            name: name.into(),
            url: format!("http://{name}/v1"),
            dialect: Dialect::OpenAi,
            api_key_env: None,
            max_concurrency: max,
            weight: 1,
        }
    }

    fn router() -> (Router, Model) {
        let regions = vec![
            Region {
                name: "us-east".into(),
                order: 0,
                instances: vec![instance("a", 1), instance("b", 1)],
            },
            Region {
                name: "eu-west".into(),
                order: 1,
                instances: vec![instance("c", 1)],
            },
        ];
        let model = Model {
            alias: "m".into(),
            kind: ModelKind::Chat,
            deployments: vec![
                Deployment {
                    region: "us-east".into(),
                    upstream_model: "m-us".into(),
                },
                Deployment {
                    region: "eu-west".into(),
                    upstream_model: "m-eu".into(),
                },
            ],
            tokenizer: crate::domain::TokenizerKind::Heuristic,
            price: None,
        };
        (Router::new(&regions), model)
    }

    fn names(candidates: &[Candidate]) -> Vec<&str> {
        candidates
            .iter()
            .map(|c| c.instance.instance.name.as_str())
            .collect()
    }

    #[test]
    fn regions_come_in_failover_order_and_instances_rotate() {
        let (router, model) = router();
        assert_eq!(names(&router.candidates(&model)), ["a", "b", "c"]);
        assert_eq!(names(&router.candidates(&model)), ["b", "a", "c"]);
        assert_eq!(router.candidates(&model)[2].upstream_model, "m-eu");
    }

    #[test]
    fn weights_set_how_often_an_instance_goes_first() {
        let (_, model) = router();
        let mut heavy = instance("a", 1);
        heavy.weight = 3;
        let router = Router::new(&[Region {
            name: "us-east".into(),
            order: 0,
            instances: vec![heavy, instance("b", 1)],
        }]);
        let firsts: Vec<String> = (0..8)
            .map(|_| router.candidates(&model)[0].instance.instance.name.clone())
            .collect();
        assert_eq!(firsts.iter().filter(|n| *n == "a").count(), 6);
        assert_eq!(router.candidates(&model).len(), 2, "each instance once");
    }

    #[test]
    fn concurrency_slots_are_capped_and_released_on_drop() {
        let (router, model) = router();
        let a = router.candidates(&model)[0].instance.clone();
        let slot = a.try_acquire();
        assert!(slot.is_some());
        assert!(a.try_acquire().is_none());
        drop(slot);
        assert_eq!(a.in_flight(), 0);
        assert!(a.try_acquire().is_some());
    }
}
