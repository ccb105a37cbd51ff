use std::time::Duration;

use super::*;

fn policy() -> CachePolicy {
    CachePolicy {
        enabled: true,
        ttl: Duration::from_secs(60),
        max_bytes: 4096,
        max_entry_bytes: 1024,
        scope: CacheScope::Tenant,
        hits_use_tokens: false,
    }
}

fn body(text: &str) -> Fields {
    serde_json::from_str(&format!(
        r#"{{"model":"m","temperature":0,"messages":[{{"role":"user","content":"{text}"}}]}}"#
    ))
    .unwrap_or_default()
}

fn usage() -> Usage {
    Usage {
        prompt_tokens: 5,
        completion_tokens: 7,
        estimated: false,
    }
}

fn lead(cache: &Arc<Cache>, ask: &Ask) -> Flight {
    match cache.lookup(ask) {
        Lookup::Lead(flight) => flight,
        _ => panic!("expected to lead"),
    }
}

#[tokio::test]
async fn a_landed_answer_is_a_hit_for_the_same_tenant_only() {
    let cache = Arc::new(Cache::new(policy()));
    let ask = cache.ask("acme", ModelKind::Chat, &body("hi"), Directives::default());
    lead(&cache, &ask).land_whole(
        "application/json".into(),
        Bytes::from_static(b"{}"),
        usage(),
    );
    assert!(matches!(cache.lookup(&ask), Lookup::Hit(e) if e.usage == usage()));
    let other = cache.ask(
        "globex",
        ModelKind::Chat,
        &body("hi"),
        Directives::default(),
    );
    assert!(matches!(cache.lookup(&other), Lookup::Lead(_)));
    let view = cache.view();
    assert_eq!((view.hits, view.misses, view.entries), (1, 2, 1));
}

#[tokio::test]
async fn followers_get_the_leaders_answer_or_go_on_their_own() {
    let cache = Arc::new(Cache::new(policy()));
    let ask = cache.ask("acme", ModelKind::Chat, &body("hi"), Directives::default());
    let leader = lead(&cache, &ask);
    let Lookup::Follow(follower) = cache.lookup(&ask) else {
        panic!("expected to follow")
    };
    let waiting = tokio::spawn(follower.landed());
    leader.land_whole(
        "application/json".into(),
        Bytes::from_static(b"{}"),
        usage(),
    );
    assert!(matches!(waiting.await, Ok(Landing::Whole(_))));

    // A leader that fails lands nothing: the follower is told, and the next one leads.
    let ask = cache.ask(
        "acme",
        ModelKind::Chat,
        &body("other"),
        Directives::default(),
    );
    let leader = lead(&cache, &ask);
    let Lookup::Follow(follower) = cache.lookup(&ask) else {
        panic!("expected to follow")
    };
    drop(leader);
    assert!(matches!(follower.landed().await, Landing::Failed));
    assert!(matches!(cache.lookup(&ask), Lookup::Lead(_)));
    assert_eq!(cache.view().coalesced, 2);
}

#[tokio::test]
async fn opting_out_bypasses_and_no_cache_refreshes() {
    let cache = Arc::new(Cache::new(policy()));
    let fields = body("hi");
    let store_nothing = Directives {
        no_store: true,
        ..Directives::default()
    };
    let ask = cache.ask("acme", ModelKind::Chat, &fields, store_nothing);
    assert!(matches!(cache.lookup(&ask), Lookup::Bypass));
    let random: Fields =
        serde_json::from_str(r#"{"model":"m","temperature":0.7}"#).unwrap_or_default();
    let ask = cache.ask("acme", ModelKind::Chat, &random, Directives::default());
    assert!(matches!(cache.lookup(&ask), Lookup::Bypass));
    let opted_in = Directives {
        opt_in: Some(true),
        ..Directives::default()
    };
    let ask = cache.ask("acme", ModelKind::Chat, &random, opted_in);
    assert!(matches!(cache.lookup(&ask), Lookup::Lead(_)));

    let ask = cache.ask("acme", ModelKind::Chat, &fields, Directives::default());
    lead(&cache, &ask).land_whole("application/json".into(), Bytes::from_static(b"1"), usage());
    let fresh = Directives {
        no_cache: true,
        ..Directives::default()
    };
    let refresh = cache.ask("acme", ModelKind::Chat, &fields, fresh);
    lead(&cache, &refresh).land_whole("application/json".into(), Bytes::from_static(b"2"), usage());
    let Lookup::Hit(entry) = cache.lookup(&ask) else {
        panic!("expected a hit")
    };
    assert!(matches!(&entry.body, Stored::Whole { bytes, .. } if bytes == "2"));
}

#[tokio::test]
async fn the_least_recently_used_go_first_and_big_answers_are_not_kept() {
    // Room for two answers of about 1 KiB.
    let cache = Arc::new(Cache::new(CachePolicy {
        max_bytes: 2500,
        ..policy()
    }));
    let answer = Bytes::from(vec![b'x'; 900]);
    let asks: Vec<Ask> = (0..3)
        .map(|i| {
            cache.ask(
                "acme",
                ModelKind::Chat,
                &body(&i.to_string()),
                Directives::default(),
            )
        })
        .collect();
    for ask in &asks[..2] {
        lead(&cache, ask).land_whole("application/json".into(), answer.clone(), usage());
    }
    // Use the first again: the second is now the least recently used.
    assert!(matches!(cache.lookup(&asks[0]), Lookup::Hit(_)));
    lead(&cache, &asks[2]).land_whole("application/json".into(), answer.clone(), usage());
    let view = cache.view();
    assert!(view.bytes <= 2500, "{} bytes kept", view.bytes);
    assert_eq!(view.evictions, 1);
    assert!(matches!(cache.lookup(&asks[0]), Lookup::Hit(_)));
    assert!(matches!(cache.lookup(&asks[1]), Lookup::Lead(_)));

    let big = cache.ask("acme", ModelKind::Chat, &body("big"), Directives::default());
    lead(&cache, &big).land_whole(
        "application/json".into(),
        Bytes::from(vec![b'x'; 2000]),
        usage(),
    );
    assert!(matches!(cache.lookup(&big), Lookup::Lead(_)));
}

#[tokio::test]
async fn purge_drops_one_tenant_or_everything() {
    let cache = Arc::new(Cache::new(policy()));
    for tenant in ["acme", "globex"] {
        let ask = cache.ask(tenant, ModelKind::Chat, &body("hi"), Directives::default());
        lead(&cache, &ask).land_whole(
            "application/json".into(),
            Bytes::from_static(b"{}"),
            usage(),
        );
    }
    assert_eq!(cache.purge(Some("acme")), 1);
    assert_eq!(
        cache.view().scopes.iter().filter(|s| s.entries > 0).count(),
        1
    );
    assert_eq!(cache.purge(None), 1);
    assert_eq!(cache.view().entries, 0);
}

#[tokio::test]
async fn expired_answers_are_not_served() {
    let cache = Arc::new(Cache::new(policy()));
    let ask = cache.ask("acme", ModelKind::Chat, &body("hi"), Directives::default());
    let key = ask.key.unwrap_or_default();
    let mut entry = cache.entry("acme".into(), Stored::Events(vec![]), usage());
    entry.expires_ms = now_ms().saturating_sub(1);
    cache.keep(key, Arc::new(entry));
    assert!(matches!(cache.lookup(&ask), Lookup::Lead(_)));
    assert_eq!(cache.view().expirations, 1);
}
