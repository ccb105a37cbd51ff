//! `Gateway::serve`: the whole request path as one call. A front builds an `Inbound`
//! (an authenticated tenant, the endpoint, the body's fields, cache directives, a
//! session) and renders the `Reply` or the `Refusal`; everything between happens here,
//! in the order `ARCHITECTURE.md` draws: parse, cache (hit, follow, lead), estimate,
//! admission and seat, route and attempts, then the answer returned whole or relayed
//! through the stream hub, settled and recorded.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::accounting::{StreamAccount, usage_of_answer};
use super::record::Recorder;
use super::refusal::{Headers, Values};
use super::{Answer, AnswerBody, Call, Gateway, Refusal, Ticket};
use crate::admission::{Demand, estimate};
use crate::cache::{Directives, Entry, Flight, Landing, Lookup, Stored};
use crate::clock;
use crate::domain::{Fields, Model, ModelKind, Tenant, Usage, headers as header};
use crate::streams::hub::{ChunkLog, EventStream, StreamMeta};
use crate::streams::{self, Cut, Patience};

/// A parsed request from any front, on its way into the pipeline.
pub struct Inbound {
    pub request_id: Arc<str>,
    /// The path the client called, as the audit log names it (`/v1/responses`).
    pub endpoint: &'static str,
    /// The authenticated tenant's name, and the public id of the key it used.
    pub tenant: String,
    pub key_id: Arc<str>,
    pub kind: ModelKind,
    /// The body's top-level fields; those the gateway does not read pass through as sent.
    pub fields: Fields,
    pub directives: Directives,
    /// A session key from the front (e.g. `x-session-id`); the body's `user` otherwise.
    pub session: Option<String>,
    /// The one instance that may serve this request: it stores the response that the
    /// request follows (`previous_response_id`).
    pub pin: Option<String>,
    /// A batch line: it waits for seats no tier is waiting for (`scheduler::BATCH`).
    pub batch: bool,
    pub arrival: Instant,
}

/// An answer for the client: its status, the gateway's headers, and the body.
pub struct Reply {
    pub status: StatusCode,
    /// `x-ratelimit-*`, `x-switchyard-*`, `age`.
    pub headers: Headers,
    pub body: ReplyBody,
}

pub enum ReplyBody {
    Whole {
        content_type: HeaderValue,
        bytes: Bytes,
    },
    /// SSE frames, canonical, ready to send.
    Stream(EventStream),
}

/// What the pipeline read of the body before deciding anything.
struct Parsed<'g> {
    tenant: &'g Tenant,
    model: &'g Model,
    stream: bool,
    /// The client did not ask for the usage chunk, which the gateway asks for anyway.
    strip_usage: bool,
}

impl Gateway {
    /// Serves one request, from the cache or an upstream, within the tenant's limits.
    /// Every outcome is recorded (audit, latency, counters) once: whole answers and
    /// refusals as this returns, streams when they end.
    pub async fn serve(&self, inbound: Inbound) -> Result<Reply, Refusal> {
        let mut recorder = Recorder::new(
            self,
            &inbound.request_id,
            inbound.endpoint,
            inbound.arrival,
            Some((&inbound.tenant, &inbound.key_id)),
        );
        let _work = self.shutdown.work();
        let cut = self.shutdown.cut_signal();
        // Boxed, as are the upstream calls below: a future is moved whole into each
        // caller's, and these are the large ones.
        let outcome = tokio::select! {
            biased;
            outcome = crate::wake::boxed(|| self.walk(inbound, &mut recorder)) => outcome,
            () = cut => Err(Refusal::shutting_down()),
        };
        match &outcome {
            Ok(reply) => recorder.finish(reply.status.as_u16(), None),
            Err(refusal) => recorder.finish(refusal.status.as_u16(), refusal.code),
        }
        outcome
    }

    /// Records a request refused before it could be served (no key, a body that is not
    /// JSON, …), so the audit log and the counters see every request.
    pub fn refused_early(
        &self,
        request_id: &Arc<str>,
        endpoint: &'static str,
        tenant: Option<(&str, &Arc<str>)>,
        refusal: &Refusal,
    ) {
        let mut recorder = Recorder::new(self, request_id, endpoint, clock::now(), tenant);
        recorder.finish(refusal.status.as_u16(), refusal.code);
    }

    async fn walk(&self, mut inbound: Inbound, recorder: &mut Recorder) -> Result<Reply, Refusal> {
        let parsed = self.parse(&mut inbound, recorder)?;
        let flight = match self.read_cache(&inbound, &parsed, recorder).await? {
            Ok(reply) => return Ok(reply),
            Err(flight) => flight,
        };
        let cache_result = if flight.is_some() { "miss" } else { "bypass" };
        recorder.note(|r| r.cache = Some(cache_result.into()));

        let prompt_tokens = prompt_tokens(inbound.kind, parsed.model, &inbound.fields).await;
        let demand = Demand {
            batch: inbound.batch,
            ..demand(inbound.kind, parsed.model, &inbound.fields, prompt_tokens)
        };
        let tenant = &parsed.tenant.name;
        let ticket = self.admit(tenant, &demand, inbound.batch).await.map_err(|refused| {
            tracing::debug!(request_id = %inbound.request_id, %tenant, ?refused, "request refused");
            Refusal::from(refused)
        })?;
        recorder.note(|r| {
            r.tokens_reserved = Some(ticket.tokens());
            r.queue_ms = Some(ticket.queued.as_millis() as u64);
        });
        // Every value below (limits, where it was served, the stream's id) is written
        // in one scratch buffer: room for long names, so it is seldom grown.
        let mut values = Values::with_capacity(128);
        let mut headers = values.rate_headers(ticket.headers());
        headers.push((header::QUEUE_MS, values.number(ticket.queued.as_millis())));
        headers.push((header::CACHE, HeaderValue::from_static(cache_result)));
        let Answer {
            region,
            instance,
            tally,
            status,
            headers: mut upstream_headers,
            reason,
            started,
            body,
        } = crate::wake::boxed(|| self.upstream(&mut inbound, &parsed, &ticket))
            .await
            .map_err(|refusal| refusal.with_headers(headers.clone()))?;
        let route = (&region, &instance, &reason);
        recorder.routed(
            route,
            &parsed.model.alias,
            ticket.tier(),
            ticket.queued,
            tally,
        );
        for (name, value) in [
            (header::REGION, &region),
            (header::INSTANCE, &instance),
            (header::ROUTE, &reason),
        ] {
            headers.extend(values.text(value).map(|value| (name, value)));
        }
        let kind = inbound.kind;
        // The answer's parts are moved, not copied: a copy of a shared value is a count
        // taken and given back.
        match body {
            AnswerBody::Whole(bytes) => {
                let content_type = upstream_headers
                    .remove(CONTENT_TYPE)
                    .unwrap_or(HeaderValue::from_static("application/json"));
                let upstream = clock::since(started);
                let kept =
                    self.settle_whole(kind, &parsed, ticket, &bytes, status, recorder, upstream);
                if let (Some(flight), Some(usage)) = (flight, kept) {
                    let kept_type = content_type.to_str().unwrap_or("application/json");
                    flight.land_whole(kept_type.to_owned(), bytes.clone(), usage);
                }
                let body = ReplyBody::Whole {
                    content_type,
                    bytes,
                };
                Ok(Reply {
                    status,
                    headers,
                    body,
                })
            }
            AnswerBody::Stream { response, slot } => {
                let log = self.hub.open(StreamMeta {
                    tenant: tenant.clone(),
                    model: parsed.model.alias.clone(),
                    region: region.to_string(),
                    instance: instance.to_string(),
                    strips_usage: parsed.strip_usage,
                });
                let account = StreamAccount {
                    ticket: Some(ticket),
                    slot: Some(slot),
                    router: self.router.clone(),
                    tokenizer: parsed.model.tokenizer,
                    log: log.clone(),
                    recorder: recorder.hand_over(),
                    content: String::new(),
                    usage: None,
                    completion: 0,
                    ended_with: None,
                };
                let upstream = format!("{region}/{instance}");
                let reader = self.relay(&inbound.request_id, upstream, response, account);
                headers.extend(values.text(&log.id).map(|id| (header::STREAM_ID, id)));
                if let Some(flight) = flight {
                    flight.land_stream(log);
                }
                let body = ReplyBody::Stream(reader);
                Ok(Reply {
                    status,
                    headers,
                    body,
                })
            }
        }
    }

    /// Reads what the pipeline decides on: the tenant, the model (known, and served at
    /// this endpoint), whether to stream, and chat's messages.
    fn parse(&self, inbound: &mut Inbound, recorder: &mut Recorder) -> Result<Parsed<'_>, Refusal> {
        let tenant = self
            .config
            .tenants
            .iter()
            .find(|t| t.name == inbound.tenant)
            .ok_or_else(|| Refusal::from(crate::auth::AuthError::Invalid))?;
        let fields = &mut inbound.fields;
        let model = self.model_of(fields, inbound.kind)?;
        if model.kind != inbound.kind.served_by() {
            let path = format!("/v1{}", model.kind.upstream_path());
            return Err(Refusal::wrong_endpoint(
                &model.alias,
                &model.kind.to_string(),
                &path,
            ));
        }
        let stream = match fields.get("stream").map(|raw| raw.get().trim()) {
            None | Some("null" | "false") => false,
            Some("true") => inbound.kind.completes(),
            Some(_) => {
                return Err(Refusal::bad_parameter(
                    "stream",
                    "'stream' must be a boolean".into(),
                ));
            }
        };
        if inbound.kind == ModelKind::Chat
            && fields.get("messages").is_some_and(|m| is_empty_list(m))
        {
            return Err(Refusal::empty_messages());
        }
        if matches!(inbound.kind, ModelKind::Responses | ModelKind::Messages) {
            self.check_translatable(model, inbound.kind, fields, inbound.pin.is_some())?;
        }
        recorder.keep_content(tenant.audit_content);
        let keep_prompt = recorder.keeps_content();
        recorder.note(|r| {
            r.model = Some(model.alias.clone());
            r.stream = Some(stream);
            if keep_prompt {
                let content = ["messages", "input", "prompt"]
                    .into_iter()
                    .find_map(|field| fields.get(field));
                r.prompt = content.and_then(|raw| serde_json::from_str(raw.get()).ok());
            }
        });
        // Streams always ask the upstream for usage, so they are charged exactly; clients
        // that did not ask for the usage chunk do not get it.
        // Responses and Messages streams report usage in their events by themselves.
        let chat = matches!(inbound.kind, ModelKind::Chat | ModelKind::Completions);
        let strip_usage = stream && chat && !ask_for_usage(fields);
        Ok(Parsed {
            tenant,
            model,
            stream,
            strip_usage,
        })
    }

    /// A Responses or Messages request that some instance of `model` would get
    /// translated to chat is checked here, and refused with the parameter named when it is
    /// malformed, or beyond what chat completions say and no instance serves that API
    /// itself. When every instance does (or the request is pinned to one), the upstream
    /// judges it.
    fn check_translatable(
        &self,
        model: &Model,
        kind: ModelKind,
        fields: &Fields,
        pinned: bool,
    ) -> Result<(), Refusal> {
        let speaks = |i: &crate::domain::Instance| crate::providers::speaks(i, kind);
        let mut instances = self.config.instances_of(model);
        if pinned || instances.all(speaks) {
            return Ok(());
        }
        let request: serde_json::Map<String, Value> = serde_json::to_string(fields)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_default();
        let Err(refused) = crate::providers::translatable(kind, &request) else {
            return Ok(());
        };
        let native = self.config.instances_of(model).any(speaks);
        if refused.invalid || !native {
            return Err(Refusal::bad_parameter(refused.param, refused.message));
        }
        Ok(())
    }

    /// The configured model a request names in `model`; unknown aliases are refused with
    /// those of `kind` listed.
    fn model_of(&self, fields: &Fields, kind: ModelKind) -> Result<&Model, Refusal> {
        let alias = match fields
            .get("model")
            .map(|raw| serde_json::from_str(raw.get()))
        {
            Some(Ok(Value::String(alias))) if !alias.is_empty() => alias,
            None | Some(Ok(Value::Null | Value::String(_))) => return Err(Refusal::missing_model()),
            Some(_) => {
                return Err(Refusal::bad_parameter(
                    "model",
                    "'model' must be a string".into(),
                ));
            }
        };
        self.config.model(&alias).ok_or_else(|| {
            let known: Vec<&str> = self
                .config
                .models
                .iter()
                .filter(|m| m.kind == kind)
                .map(|m| m.alias.as_str())
                .collect();
            Refusal::unknown_model(&alias, &known)
        })
    }

    /// The tokens the prompt of a request of `kind` counts, as admission estimates them
    /// for its model (a front's `count_tokens`).
    pub async fn count_prompt(&self, kind: ModelKind, fields: &Fields) -> Result<u64, Refusal> {
        let model = self.model_of(fields, ModelKind::Chat)?;
        if model.kind != kind.served_by() {
            let path = format!("/v1{}", model.kind.upstream_path());
            let served = model.kind.to_string();
            return Err(Refusal::wrong_endpoint(&model.alias, &served, &path));
        }
        Ok(prompt_tokens(kind, model, fields).await)
    }

    /// The read side: a kept answer, or an identical request in flight, may serve this
    /// one (`Ok`); otherwise it goes upstream, leading a flight when it is cacheable.
    async fn read_cache(
        &self,
        inbound: &Inbound,
        parsed: &Parsed<'_>,
        recorder: &mut Recorder,
    ) -> Result<Result<Reply, Option<Flight>>, Refusal> {
        let ask = self.cache.ask(
            &parsed.tenant.name,
            inbound.kind,
            &inbound.fields,
            inbound.directives,
        );
        match self.cache.lookup(&ask) {
            Lookup::Bypass => Ok(Err(None)),
            Lookup::Lead(flight) => Ok(Err(Some(flight))),
            Lookup::Hit(entry) => {
                recorder.hit("cache", Some(entry.usage));
                self.answer_kept(parsed, &entry, "cache").await.map(Ok)
            }
            Lookup::Follow(follower) => {
                // A follower waits no longer than anyone waits for a seat.
                let wait = self.follow_wait(&parsed.tenant.name);
                match tokio::time::timeout(wait, follower.landed()).await {
                    Ok(Landing::Whole(entry)) => {
                        recorder.hit("coalesced", Some(entry.usage));
                        self.answer_kept(parsed, &entry, "coalesced").await.map(Ok)
                    }
                    Ok(Landing::Stream(log)) => {
                        recorder.hit("coalesced", None);
                        self.follow(parsed, log).await.map(Ok)
                    }
                    // The leader got no answer to share, or took too long: every
                    // follower goes upstream on its own now, together, rather than
                    // one new leader at a time.
                    Ok(Landing::Pending | Landing::Failed) | Err(_) => Ok(Err(None)),
                }
            }
        }
    }

    /// How long a follower waits for its leader: its tier's `max_wait`.
    fn follow_wait(&self, tenant: &str) -> std::time::Duration {
        self.admission
            .tier_of(tenant)
            .and_then(|tier| self.config.tier(&tier).map(|t| t.max_wait))
            .unwrap_or(std::time::Duration::from_secs(30))
    }

    /// Routes and attempts the request upstream.
    async fn upstream(
        &self,
        inbound: &mut Inbound,
        parsed: &Parsed<'_>,
        ticket: &Ticket,
    ) -> Result<Answer, Refusal> {
        let session = inbound
            .session
            .clone()
            .or_else(|| {
                let user = inbound.fields.get("user")?;
                serde_json::from_str::<String>(user.get()).ok()
            })
            .filter(|key| !key.is_empty())
            // Kept for up to the session TTL: a fixed-size digest, whatever the client sent.
            .map(|key| session_digest(&parsed.tenant.name, &key));
        let tenant = parsed.tenant;
        let model = parsed.model;
        // The legacy endpoint knows only `max_tokens`.
        let limit_field = match inbound.kind {
            ModelKind::Completions => "max_tokens",
            ModelKind::Responses => "max_output_tokens",
            ModelKind::Messages => "max_tokens",
            _ => model.limit_field,
        };
        if inbound.kind.completes() {
            limit_completion(&mut inbound.fields, limit_field, ticket.completion_tokens());
        }
        self.forward(Call {
            request_id: &inbound.request_id,
            model,
            kind: inbound.kind,
            body: std::mem::take(&mut inbound.fields),
            stream: parsed.stream,
            tokens: ticket.tokens(),
            regions: tenant.regions.as_deref(),
            session: session.as_deref(),
            pin: inbound.pin.as_deref(),
        })
        .await
        .map_err(|error| {
            tracing::warn!(request_id = %inbound.request_id, tenant = %tenant.name, model = %model.alias, %error, "request failed");
            let mut refusal = Refusal::from(error);
            if let Some(regions) = &tenant.regions {
                refusal.message.push_str(&format!(
                    " (tenant {} is restricted to {} by data residency)",
                    tenant.name,
                    regions.join(", ")
                ));
            }
            refusal
        })
    }

    /// Settles a whole answer: what it used (when the upstream answered 2xx; a refusal
    /// of the request itself used nothing), recorded. Returns the usage of one to keep.
    #[allow(clippy::too_many_arguments)]
    fn settle_whole(
        &self,
        kind: ModelKind,
        parsed: &Parsed<'_>,
        ticket: Ticket,
        bytes: &[u8],
        status: StatusCode,
        recorder: &mut Recorder,
        upstream: std::time::Duration,
    ) -> Option<Usage> {
        if !status.is_success() {
            drop(ticket);
            return None;
        }
        let reported = usage_of_answer(kind, bytes, &ticket, parsed.model.tokenizer);
        let (usage, capped) = ticket.plausible(reported);
        recorder.used(usage, capped);
        if recorder.keeps_content() {
            recorder.note(|r| r.answer = answer_text(bytes));
        }
        recorder.answered(ticket.queued, Some(upstream));
        ticket.settle(usage);
        Some(usage)
    }

    /// Relays an upstream stream into its account's chunk log; returns the client's
    /// reader. The relay ends at a drain deadline, an operator's kill or a shutdown cut.
    fn relay(
        &self,
        request_id: &str,
        upstream: String,
        response: crate::providers::Response,
        account: StreamAccount,
    ) -> EventStream {
        let log = account.log.clone();
        // Handles only: each wait is made inside the select, where it is stored once (a
        // wait made out here and moved in would take its size twice, for every stream).
        let drained = account
            .slot
            .as_ref()
            .map(|slot| slot.instance().cut_watch());
        let killable = log.clone();
        let shutdown = self.shutdown.clone();
        let describe = upstream.clone();
        let cut = async move {
            tokio::select! {
                () = async move {
                    match drained {
                        Some(drained) => drained.cut().await,
                        None => std::future::pending().await,
                    }
                } => Cut {
                    code: "upstream_drained",
                    message: format!(
                        "the upstream {upstream} was drained by an operator and this stream outlived the drain deadline; the answer is incomplete"
                    ),
                },
                () = killable.killed() => Cut {
                    code: "stream_killed",
                    message: "an operator ended this stream; the answer is incomplete".into(),
                },
                () = shutdown.cut_signal() => Cut {
                    code: "server_shutting_down",
                    message: "the gateway is shutting down and this stream outlived its grace period; the answer is incomplete".into(),
                },
            }
        };
        let timeouts = self.upstreams.timeouts();
        let patience = Patience {
            first_event: timeouts.stream_first_event,
            idle: timeouts.stream_idle,
        };
        let relay = streams::relay(
            response.bytes_stream(),
            account,
            cut,
            patience,
            describe,
            request_id.to_string(),
        );
        self.hub.start(&log, relay)
    }

    /// Answers from a kept answer (or one an identical request just got): counted as a
    /// request, its tokens as `cache.hits_use_tokens` says; a kept stream is replayed as one.
    async fn answer_kept(
        &self,
        parsed: &Parsed<'_>,
        entry: &Entry,
        route: &str,
    ) -> Result<Reply, Refusal> {
        let ticket = self.admit_cached(&parsed.tenant.name, parsed.model).await?;
        let mut values = Values::with_capacity(128);
        let mut headers = values.rate_headers(ticket.headers());
        ticket.settle(entry.usage);
        let body = match &entry.body {
            Stored::Whole {
                content_type,
                bytes,
            } => ReplyBody::Whole {
                content_type: HeaderValue::from_str(content_type)
                    .unwrap_or(HeaderValue::from_static("application/json")),
                bytes: bytes.clone(),
            },
            Stored::Events(events) => {
                let strip = parsed.strip_usage;
                let events = events.clone().into_iter().filter_map(move |event| {
                    let event = if strip {
                        streams::without_usage_chunk(event)
                    } else {
                        event
                    };
                    (!event.is_empty()).then_some(Ok(event))
                });
                ReplyBody::Stream(Box::pin(futures_util::stream::iter(events)))
            }
        };
        headers.push((header::CACHE, HeaderValue::from_static("hit")));
        headers.push((header::AGE, values.number(entry.age_secs())));
        headers.extend(values.text(route).map(|route| (header::ROUTE, route)));
        Ok(Reply {
            status: StatusCode::OK,
            headers,
            body,
        })
    }

    /// Answers with the chunk log of an identical stream in flight, from its start. The
    /// follower is charged when the stream ends, like a hit.
    async fn follow(&self, parsed: &Parsed<'_>, log: Arc<ChunkLog>) -> Result<Reply, Refusal> {
        let ticket = self.admit_cached(&parsed.tenant.name, parsed.model).await?;
        let mut values = Values::with_capacity(128);
        let mut headers = values.rate_headers(ticket.headers());
        let reader = self.hub.reader(&log, 0, false, parsed.strip_usage);
        if log.meta.tenant == parsed.tenant.name {
            headers.extend(values.text(&log.id).map(|id| (header::STREAM_ID, id)));
        }
        // Settled as the reader ends: the stream is complete by then, usage chunk included.
        let mut ticket = Some(ticket);
        let reader = reader.chain(futures_util::stream::poll_fn(move |_| {
            if let Some(ticket) = ticket.take() {
                ticket.settle(streams::usage_in_events(&log.events()).unwrap_or_default());
            }
            std::task::Poll::Ready(None)
        }));
        headers.push((header::CACHE, HeaderValue::from_static("hit")));
        headers.push((header::ROUTE, HeaderValue::from_static("coalesced")));
        Ok(Reply {
            status: StatusCode::OK,
            headers,
            body: ReplyBody::Stream(Box::pin(reader)),
        })
    }
}

/// Sends upstream the completion limit admission reserved: the client's own when it is
/// within it, otherwise the reservation, in the field the client used (or the model's),
/// so an answer can never run past what the budget holds for it.
fn limit_completion(fields: &mut Fields, model_field: &'static str, limit: u64) {
    let field = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find(|f| fields.get(*f).is_some_and(|raw| raw.get().trim() != "null"))
        .unwrap_or(model_field);
    let within = fields
        .get(field)
        .and_then(|raw| raw.get().trim().parse::<u64>().ok())
        .is_some_and(|asked| asked <= limit);
    if !within && let Ok(raw) = serde_json::value::to_raw_value(&limit) {
        fields.insert(field.to_string(), raw);
    }
}

/// A session key as the router keeps it: 32 hex digits of SHA-256 over the tenant and
/// the client's key, so a megabyte of `user` costs what any other session does, and
/// tenants never share a session.
fn session_digest(tenant: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(tenant.as_bytes())
        .chain_update([0])
        .chain_update(key.as_bytes())
        .finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Prompts up to this size are counted where the request runs: tens of microseconds.
/// Larger ones (a book pasted in costs milliseconds) are counted on the blocking pool,
/// as the vocabulary is read there (tens of milliseconds, once), so no runtime thread
/// stalls and other requests keep moving.
const COUNT_INLINE: usize = 16 << 10;

/// Large prompts counted on the blocking pool at once. Counting is CPU work, so more
/// would not finish sooner on a few cores; and the pre-tokenizer keeps a matching cache
/// (tens of KiB) for every thread that ever counted at the same time as another, for
/// good, so the bound is also one on that memory.
static LARGE_COUNTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A request's prompt tokens, counted with the model's BPE.
async fn prompt_tokens(kind: ModelKind, model: &Model, fields: &Fields) -> u64 {
    let tokenizer = model.tokenizer;
    let field = match kind {
        ModelKind::Chat | ModelKind::Messages => "messages",
        ModelKind::Embeddings | ModelKind::Responses => "input",
        ModelKind::Completions => "prompt",
    };
    let raw = fields.get(field);
    let instructions = match kind {
        ModelKind::Responses => fields.get("instructions"),
        ModelKind::Messages => fields.get("system"),
        _ => None,
    };
    let count = move |raw: Option<&serde_json::value::RawValue>,
                      instructions: Option<&serde_json::value::RawValue>| match kind
    {
        ModelKind::Chat => estimate::chat_prompt(tokenizer, raw),
        ModelKind::Responses => estimate::responses_prompt(tokenizer, instructions, raw),
        ModelKind::Messages => estimate::messages_prompt(tokenizer, instructions, raw),
        // A text, or a list of texts, as embeddings' input is.
        ModelKind::Embeddings | ModelKind::Completions => {
            estimate::embeddings_input(tokenizer, raw)
        }
    };
    let size = raw.map_or(0, |r| r.get().len()) + instructions.map_or(0, |r| r.get().len());
    if !estimate::ready(tokenizer) {
        estimate::load(tokenizer).await;
    }
    if size <= COUNT_INLINE {
        return count(raw.map(|r| &**r), instructions.map(|r| &**r));
    }
    let _turn = LARGE_COUNTS.acquire().await;
    let (owned, instructions) = (raw.cloned(), instructions.cloned());
    tokio::task::spawn_blocking(move || count(owned.as_deref(), instructions.as_deref()))
        .await
        // Only a panic while counting gets here: a token per four bytes stands in.
        .unwrap_or((size as u64).div_ceil(4))
}

/// What admission reserves for a request: its prompt as counted, and its completion as
/// capped.
fn demand(kind: ModelKind, model: &Model, fields: &Fields, prompt_tokens: u64) -> Demand {
    let field = |name: &str| fields.get(name).map(|raw| &**raw);
    Demand {
        prompt_tokens,
        max_tokens: field("max_completion_tokens")
            .or(field("max_tokens"))
            .or(field("max_output_tokens"))
            .and_then(|raw| raw.get().parse().ok()),
        completion: kind.completes(),
        price: model.price,
        batch: false,
    }
}

/// The text of a whole chat answer (every choice's message), for tenants that opted in.
fn answer_text(body: &[u8]) -> Option<String> {
    let chunk = streams::Chunk::parse(std::str::from_utf8(body).ok()?)?;
    let text: Vec<String> = chunk.texts().map(String::from).collect();
    (!text.is_empty()).then(|| text.join("\n"))
}

/// Makes sure the request asks for `stream_options.include_usage`; returns whether the
/// client had asked for it itself.
fn ask_for_usage(fields: &mut Fields) -> bool {
    let mut options = fields
        .get("stream_options")
        .and_then(|raw| serde_json::from_str::<serde_json::Map<String, Value>>(raw.get()).ok())
        .unwrap_or_default();
    if options.get("include_usage") == Some(&Value::Bool(true)) {
        return true;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    if let Ok(raw) = serde_json::value::to_raw_value(&options) {
        fields.insert("stream_options".into(), raw);
    }
    false
}

/// Whether a field's value is an empty list, read off its text: a raw value is valid
/// JSON, so `[` with only whitespace before its `]` is one. Parsing the list to count
/// its items went over every message once more for each chat request.
fn is_empty_list(raw: &RawValue) -> bool {
    raw.get()
        .trim_ascii_start()
        .strip_prefix('[')
        .is_some_and(|rest| rest.trim_ascii_start().starts_with(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_list_with_nothing_in_it_is_empty() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        for empty in ["[]", " [ ] ", "[\n\t]"] {
            assert!(is_empty_list(&raw(empty)), "{empty:?}");
        }
        for other in [
            r#"[{"role":"user"}]"#,
            "[[]]",
            "[ 1 ]",
            "{}",
            r#""[]""#,
            "null",
        ] {
            assert!(!is_empty_list(&raw(other)), "{other:?}");
        }
    }
}
