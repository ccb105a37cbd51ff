//! Embedders: how flows' `embed` and `retrieve` steps turn texts into vectors. Each
//! kind is one file behind the `Embedder` trait, registered in `EMBEDDERS`; steps use
//! the first. The one kind today embeds through the pipeline (`pipeline.rs`), so any
//! embeddings alias works and every batch obeys the tenant's limits.

mod pipeline;

use futures_util::future::BoxFuture;

use super::Gateway;
use super::flows::Failure;

/// Texts sent in one embeddings request.
pub const EMBED_BATCH: usize = 64;

/// What embedding texts used and made.
#[derive(Default)]
pub struct Embedded {
    /// One vector per text, in the texts' order.
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: u64,
}

/// Who asks for embeddings: the tenant, and the caller its requests are made as.
pub(super) type Asker<'a> = (&'a str, &'a str);

/// A kind of embedder.
pub(super) trait Embedder: Sync {
    /// Its kind's name, as `EMBEDDERS` lists it.
    fn name(&self) -> &'static str;
    /// Embeds `texts` with the embeddings model `model`; the ids of the requests it
    /// made are added to `request_ids`.
    fn embed<'a>(
        &'a self,
        gateway: &'a Gateway,
        asker: Asker<'a>,
        model: &'a str,
        texts: &'a [String],
        request_ids: &'a mut Vec<String>,
    ) -> BoxFuture<'a, Result<Embedded, Failure>>;
}

/// Every kind of embedder; steps embed with the first.
pub(super) static EMBEDDERS: &[&dyn Embedder] = &[&pipeline::Pipeline];

impl Gateway {
    /// Embeds `texts` with `model` as `tenant`, with the default embedder.
    pub(super) async fn embed_texts(
        &self,
        asker: Asker<'_>,
        model: &str,
        texts: &[String],
        request_ids: &mut Vec<String>,
    ) -> Result<Embedded, Failure> {
        let embedder = EMBEDDERS.first().copied().unwrap_or(&pipeline::Pipeline);
        tracing::debug!(
            embedder = embedder.name(),
            model,
            texts = texts.len(),
            "embedding"
        );
        embedder.embed(self, asker, model, texts, request_ids).await
    }
}
