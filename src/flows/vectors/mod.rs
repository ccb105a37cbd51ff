//! Vector collections, the retriever's index: an `Index` trait, its kinds one file each,
//! registered in `INDEXES`. A collection is made with the first (`quantized.rs`, the
//! quantized scan; why that and not HNSW is in its header). The floats themselves stay
//! in the store, from which every collection is rebuilt at start.

pub mod quantized;

use serde_json::{Map, Value};

/// One row as it is put and found: an id (putting the same id again replaces it), the
/// text it was made from, and metadata a query may filter on.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub text: String,
    pub metadata: Map<String, Value>,
}

/// A row found by a query, with its cosine similarity to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub row: Row,
    pub score: f32,
}

/// A collection's index: rows put by id, searched by cosine similarity.
pub trait Index: Send + Sync {
    /// Its kind's name, as `INDEXES` lists it.
    fn name(&self) -> &'static str;
    /// Rows held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Puts a row, replacing the one with the same id. A vector of other dimensions than
    /// the collection's, or of zero length, is refused with why.
    fn put(&mut self, row: Row, vector: &[f32]) -> Result<(), String>;
    /// The `k` rows most similar to `query` whose metadata has every key and value of
    /// `filter`, best first.
    fn search(&self, query: &[f32], k: usize, filter: &Map<String, Value>) -> Vec<Hit>;
}

/// Makes an empty index of one kind.
type Make = fn() -> Box<dyn Index>;

/// Every kind of index, by name; collections are made with the first.
pub static INDEXES: &[(&str, Make)] = &[("quantized", || Box::<quantized::Quantized>::default())];

/// A new, empty index of kind `name`.
pub fn index(name: &str) -> Option<Box<dyn Index>> {
    INDEXES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, make)| make())
}

/// A new, empty index of the default kind.
pub fn default_index() -> Box<dyn Index> {
    INDEXES.first().map_or_else(
        || Box::<quantized::Quantized>::default() as Box<dyn Index>,
        |(_, make)| make(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_found_by_name_and_made_empty() {
        let made = index("quantized").map(|i| (i.name(), i.is_empty()));
        assert_eq!(made, Some(("quantized", true)));
        assert!(index("hnsw").is_none());
        assert_eq!(default_index().name(), INDEXES[0].0);
    }
}
