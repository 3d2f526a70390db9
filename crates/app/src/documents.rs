//! The product documents (Path 2 of the lesson, see `bakery_db::documents`): how
//! they are kept — by the workers' consumer of `product.changed`, and by the writer
//! itself when they are the read model — read, rebuilt and checked against the
//! tables.
//!
//! They are kept whatever the read model, so that switching `BAKERY_READ_MODEL`
//! needs no rebuild and `bakery documents check` means the same on every deployment.

use bakery_config::ReadModel;
use bakery_core::catalog::Product;
use bakery_db::dataset::Dataset;
use bakery_db::documents::{Behind, Stored};
use bakery_db::{Database, Lsn};
use futures::StreamExt;

use crate::catalog::product_key;
use crate::{App, Error};

/// A product read under the documents read model: its document, one row; while it
/// has none yet (created a moment ago, or never rebuilt), the tables.
pub(crate) async fn read_product(
    db: &Database,
    id: i64,
    at: Option<Lsn>,
) -> Result<Option<Product>, Error> {
    if let Some((product, _)) = db.product_document(id, at).await? {
        metrics::counter!("bakery_documents_reads_total", "source" => "document").increment(1);
        return Ok(Some(product));
    }
    metrics::counter!("bakery_documents_reads_total", "source" => "tables").increment(1);
    Ok(db.product(id, at).await?)
}

/// One product whose document differs from its tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub product_id: i64,
    /// What differs, in words: a missing document, or each field with both values.
    pub what: String,
}

impl App {
    /// Assembles product `id`'s document from the tables and stores it unless a newer
    /// one is there; answers the product as assembled (`None`: no such product).
    pub async fn refresh_document(&self, id: i64) -> Result<Option<Product>, Error> {
        Ok(self
            .store_document(id, false)
            .await?
            .map(|(product, _)| product))
    }

    /// `product.changed` reached the documents' consumer: the document is made again.
    /// Under the documents read model a newer document also ends the cached object
    /// (a reader may have cached the older document meanwhile).
    pub async fn document_changed(&self, id: i64) -> Result<(), Error> {
        self.document_made_again(id, false).await
    }

    /// `bakery documents rebuild`: as [`App::document_changed`], and a document of
    /// the same version is replaced too (one spoiled by hand, or by a bug).
    pub async fn rebuild_document(&self, id: i64) -> Result<(), Error> {
        self.document_made_again(id, true).await
    }

    async fn document_made_again(&self, id: i64, rebuild: bool) -> Result<(), Error> {
        let stored = self.store_document(id, rebuild).await?;
        if self.0.read_model == ReadModel::Documents
            && matches!(stored, Some((_, Stored::Stored)) | None)
        {
            self.0.cache.invalidate_object(&product_key(id)).await;
        }
        Ok(())
    }

    async fn store_document(
        &self,
        id: i64,
        rebuild: bool,
    ) -> Result<Option<(Product, Stored)>, Error> {
        let Some(assembled) = self.db().assemble_product_document(id).await? else {
            return Ok(None);
        };
        let stored = self
            .db()
            .store_product_document(&assembled, rebuild)
            .await?;
        let outcome = match stored {
            Stored::Stored => "stored",
            Stored::NotNewer => "not_newer",
            Stored::Gone => "gone",
        };
        metrics::counter!("bakery_documents_stored_total", "outcome" => outcome).increment(1);
        if stored == Stored::Stored && assembled.changed_at > 0 {
            let lag_ms = (bakery_core::now_millis() - assembled.changed_at).max(0);
            metrics::histogram!("bakery_documents_lag_seconds").record(lag_ms as f64 / 1000.0);
        }
        Ok(Some((assembled.product, stored)))
    }

    /// How far the documents are behind the tables now.
    pub async fn documents_behind(&self) -> Result<Behind, Error> {
        Ok(self.db().documents_behind().await?)
    }

    /// How many products there are.
    pub async fn product_count(&self) -> Result<i64, Error> {
        Ok(self.db().product_count().await?)
    }

    /// Compares product `id`'s document with what the tables say (read by the SQL
    /// join of Path 1: the two paths checked against each other).
    pub async fn check_document(&self, id: i64) -> Result<Option<Difference>, Error> {
        let tables = self.db().product(id, Some(Lsn::LATEST)).await?;
        let document = self.db().product_document(id, Some(Lsn::LATEST)).await?;
        let what = match (tables, document) {
            (None, None) => return Ok(None),
            (None, Some((_, version))) => {
                format!("a document (version {version}) for a product the tables do not have")
            }
            (Some(_), None) => "no document".to_string(),
            (Some(tables), Some((document, version))) => {
                let fields = differing_fields(&tables, &document);
                if fields.is_empty() {
                    return Ok(None);
                }
                format!(
                    "document version {version} differs in {}",
                    fields.join("; ")
                )
            }
        };
        Ok(Some(Difference {
            product_id: id,
            what,
        }))
    }
}

/// Products asked for at a time by rebuilds and checks, and documents made at once.
const PAGE: i64 = 1_000;
const AT_ONCE: usize = 8;

impl App {
    /// Makes every product's document again ([`App::rebuild_document`]); `done` is
    /// told of each product. Answers how many there were.
    pub async fn rebuild_documents(&self, done: impl Fn()) -> Result<u64, Error> {
        let (walked, _) = self
            .each_product(done, async |app: App, id| {
                app.rebuild_document(id).await.map(|()| None::<()>)
            })
            .await?;
        Ok(walked)
    }

    /// Compares every product's document with the tables ([`App::check_document`]);
    /// `done` is told of each product. Answers how many were checked, and the
    /// differences in id order.
    pub async fn check_documents(&self, done: impl Fn()) -> Result<(u64, Vec<Difference>), Error> {
        let (walked, differences) = self
            .each_product(done, async |app: App, id| app.check_document(id).await)
            .await?;
        Ok((walked, differences))
    }

    /// Runs `each` on every product, [`AT_ONCE`] at a time, page by page in id
    /// order; answers how many products, and what `each` reported, in id order.
    async fn each_product<T>(
        &self,
        done: impl Fn(),
        each: impl AsyncFn(App, i64) -> Result<Option<T>, Error>,
    ) -> Result<(u64, Vec<T>), Error> {
        let (mut walked, mut reports, mut cursor) = (0, Vec::new(), 0);
        loop {
            let ids = self.db().product_ids(cursor, PAGE).await?;
            let Some(&last) = ids.last() else {
                return Ok((walked, reports));
            };
            let mut page: Vec<(i64, Option<T>)> = futures::stream::iter(ids)
                .map(|id| {
                    let (app, each) = (self.clone(), &each);
                    async move { each(app, id).await.map(|report| (id, report)) }
                })
                .buffer_unordered(AT_ONCE)
                .inspect(|_| done())
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
            walked += page.len() as u64;
            page.sort_by_key(|(id, _)| *id);
            reports.extend(page.into_iter().filter_map(|(_, report)| report));
            cursor = last;
        }
    }

    /// The benchmark's large catalog (`bakery_db::dataset`), made up to `products`
    /// with `reviews_per_product` reviews each; `progress` is told the products done.
    pub async fn load_bench_catalog(
        &self,
        products: i64,
        reviews_per_product: i64,
        progress: impl Fn(i64),
    ) -> Result<Dataset, Error> {
        Ok(self
            .db()
            .load_bench_catalog(products, reviews_per_product, progress)
            .await?)
    }

    /// The ids of the benchmark's products.
    pub async fn bench_product_ids(&self) -> Result<Vec<i64>, Error> {
        Ok(self.db().bench_product_ids().await?)
    }
}

/// Each top-level field whose value differs, with both values (shortened).
fn differing_fields(tables: &Product, document: &Product) -> Vec<String> {
    let as_map = |product: &Product| match serde_json::to_value(product) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let (tables, document) = (as_map(tables), as_map(document));
    tables
        .iter()
        .filter(|(field, value)| document.get(*field) != Some(value))
        .map(|(field, value)| {
            let theirs = document.get(field).cloned().unwrap_or_default();
            format!(
                "{field}: {} in the tables, {} in the document",
                short(value),
                short(&theirs)
            )
        })
        .collect()
}

fn short(value: &serde_json::Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 {
        return text;
    }
    let cut: String = text.chars().take(57).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    use bakery_core::catalog::Rating;

    use super::*;

    #[test]
    fn differences_name_each_field_with_both_values() {
        let tables = Product {
            id: 1,
            name: "Rye".into(),
            description: "Dark.".into(),
            price_cents: 350,
            images: vec![],
            reviews: vec![],
            reviews_total: 0,
            rating: Rating::from_sum(0, 0),
            updated_at: 1_700_000_000_000,
        };
        let mut document = tables.clone();
        assert!(differing_fields(&tables, &document).is_empty());
        document.price_cents = 300;
        document.name = "x".repeat(100);
        let fields = differing_fields(&tables, &document);
        assert_eq!(fields.len(), 2, "{fields:?}");
        assert!(fields.contains(&"price_cents: 350 in the tables, 300 in the document".into()));
        assert!(
            fields
                .iter()
                .any(|f| f.starts_with("name: \"Rye\" in the tables, \"xxx") && f.contains("..."))
        );
    }
}
