//! Switchyard: an OpenAI-compatible LLM gateway with an operations console.
//!
//! The request path runs top to bottom through the modules named after its stages:
//! `api` → `auth` → `gateway` → `router` → `providers`, with `streams` relaying SSE back.
//! See ARCHITECTURE.md for the map and the invariants.

pub mod admin;
pub mod admission;
pub mod alloc;
pub mod api;
pub mod audit;
pub mod auth;
pub mod background;
pub mod bench;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod demo;
pub mod domain;
pub mod files;
pub mod flows;
pub mod gateway;
pub mod ledger;
pub mod listener;
pub mod mock;
pub mod providers;
pub mod records;
pub mod router;
pub mod say;
pub mod scheduler;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod streams;
pub mod telemetry;
pub mod tls;
pub mod wake;
pub mod workers;
