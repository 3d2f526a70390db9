//! Cached queries (the lesson's first pattern): a read's result stored under a hash
//! of the query and its parameters, with a time to live. The query arrives as the
//! name `db` declared it under (which changes with its SQL) and the tables it reads:
//! this crate never sees SQL.
//!
//! Writes invalidate without finding keys: each table has a generation counter
//! (`gen:{table}`) that every write to it bumps, and a query's key includes the
//! generations of the tables it reads. After a write the old keys are simply never
//! asked for again and expire on their own.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::trace::{CacheResult, record, record_fill};
use crate::{Cache, counter};

impl Cache {
    /// The result of the query `name` with `params`, reading `tables`: cached, or run
    /// by `run` and stored.
    pub async fn query<T, E, P>(
        &self,
        name: &str,
        tables: &[&str],
        params: &P,
        ttl: Duration,
        run: impl Future<Output = Result<T, E>>,
    ) -> Result<(T, CacheResult), E>
    where
        T: Serialize + DeserializeOwned,
        P: Serialize,
    {
        let Ok(key) = self.query_key(name, tables, params).await else {
            record("query", CacheResult::Bypass);
            record_fill("query");
            return run.await.map(|value| (value, CacheResult::Bypass));
        };
        if let Ok(values) = self.get_many(std::slice::from_ref(&key)).await
            && let Some(value) = values[0]
                .as_ref()
                .and_then(|bytes| serde_json::from_slice::<T>(bytes).ok())
        {
            record("query", CacheResult::Hit);
            return Ok((value, CacheResult::Hit));
        }
        record("query", CacheResult::Miss);
        record_fill("query");
        let value = run.await?;
        if let Ok(bytes) = serde_json::to_vec(&value) {
            let _ = self.set(&key, &bytes, ttl).await;
        }
        Ok((value, CacheResult::Miss))
    }

    /// `q:` and the SHA-256 of the query's name, the parameters and the tables'
    /// current generations. The generations are read before the query runs, so a
    /// write during the run moves later readers to a new key.
    async fn query_key<P: Serialize>(
        &self,
        name: &str,
        tables: &[&str],
        params: &P,
    ) -> Result<String, crate::CacheError> {
        let generation_keys: Vec<String> = tables.iter().map(|t| format!("gen:{t}")).collect();
        let mut generations = Vec::with_capacity(tables.len());
        for (key, value) in generation_keys
            .iter()
            .zip(self.get_many(&generation_keys).await?)
        {
            generations.push(match counter(value.as_deref()) {
                Some(generation) => generation,
                None => self.incr(key).await?,
            });
        }
        let mut hasher = Sha256::new();
        hasher.update(name.as_bytes());
        hasher.update(serde_json::to_vec(params).unwrap_or_default());
        for (table, generation) in tables.iter().zip(&generations) {
            hasher.update(format!("|{table}={generation}").as_bytes());
        }
        let digest = hasher.finalize();
        Ok(format!(
            "q:{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
    }

    /// A write changed these tables: every cached query over them is now stale.
    pub async fn invalidate_tables(&self, tables: &[&str]) {
        if self.is_none() {
            return;
        }
        for table in tables {
            if let Err(error) = self.incr(&format!("gen:{table}")).await {
                tracing::warn!(%error, table, "could not bump a table generation; retrying until the cache is back");
                self.bump_later(format!("gen:{table}"));
            }
        }
    }
}
