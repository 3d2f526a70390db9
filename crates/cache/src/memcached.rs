//! The Memcached engine: several nodes, each key on one of them by consistent
//! hashing ([`Ring`]). A node that fails sends only its own keys to the database;
//! its connections are rebuilt on the next use.

use std::sync::Arc;
use std::time::Duration;

use async_memcached::{AsciiProtocol, Client, Error, Status};
use tokio::sync::{Mutex, MutexGuard};

use crate::CacheError;
use crate::ring::Ring;

/// Connections kept per node: requests needing the same node share these.
const CONNECTIONS_PER_NODE: usize = 8;

struct Node {
    addr: String,
    slots: Vec<Mutex<Option<Client>>>,
}

#[derive(Clone)]
pub struct Memcached {
    nodes: Arc<Vec<Node>>,
    ring: Arc<Ring>,
}

fn unavailable(addr: &str, e: Error) -> CacheError {
    CacheError::Unavailable(format!("memcached {addr}: {e:?}"))
}

/// A version key and a lease live on the same node as their object (`ver:Product:1`
/// and `lease:Product:1` with `Product:1`), so one node's failure touches only its
/// own objects and a waiter reads all three in one round trip.
fn routing_key(key: &str) -> &str {
    let logical = key
        .split_once('|')
        .map_or(key, |(_namespace, logical)| logical);
    logical
        .strip_prefix("ver:")
        .or_else(|| logical.strip_prefix("lease:"))
        .unwrap_or(logical)
}

fn ttl_secs(ttl: Duration) -> Option<i64> {
    Some(ttl.as_secs().max(1) as i64)
}

impl Memcached {
    pub async fn connect(addrs: &[String]) -> Result<Self, CacheError> {
        let nodes: Vec<Node> = addrs
            .iter()
            .map(|addr| Node {
                addr: addr.clone(),
                slots: (0..CONNECTIONS_PER_NODE)
                    .map(|_| Mutex::new(None))
                    .collect(),
            })
            .collect();
        let this = Self {
            ring: Arc::new(Ring::new(addrs)),
            nodes: Arc::new(nodes),
        };
        for node in this.nodes.iter() {
            let first = async {
                let mut client = Client::new(format!("tcp://{}", node.addr))
                    .await
                    .map_err(|e| unavailable(&node.addr, e))?;
                client
                    .version()
                    .await
                    .map_err(|e| unavailable(&node.addr, e))?;
                Ok::<_, CacheError>(client)
            };
            // A node that does not answer yet is connected on a later use (every
            // checkout makes a missing connection); until then its keys bypass it.
            match first.await {
                Ok(client) => *node.slots[0].lock().await = Some(client),
                Err(error) => {
                    tracing::warn!(%error, node = %node.addr, "a cache node does not answer yet; its keys bypass it until it does")
                }
            }
        }
        Ok(this)
    }

    /// Whether every node answers (for `/healthz`).
    pub async fn ping(&self) -> Result<(), CacheError> {
        for node in 0..self.nodes.len() {
            let mut slot = self.checkout(node).await?;
            let addr = &self.nodes[node].addr;
            match slot.as_mut() {
                Some(client) => {
                    client.version().await.map_err(|e| unavailable(addr, e))?;
                }
                None => return Err(CacheError::Unavailable(format!("{addr}: no connection"))),
            }
        }
        Ok(())
    }

    /// A connection to `node`, made if needed.
    async fn checkout(&self, node: usize) -> Result<MutexGuard<'_, Option<Client>>, CacheError> {
        let node = &self.nodes[node];
        let mut slot = match node.slots.iter().find_map(|s| s.try_lock().ok()) {
            Some(free) => free,
            None => node.slots[rand_index(node.slots.len())].lock().await,
        };
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(
                Client::new(format!("tcp://{}", node.addr))
                    .await
                    .map_err(|e| unavailable(&node.addr, e))?,
            );
        }
        Ok(slot)
    }

    /// Maps a call's result; a broken connection is dropped so the next call makes a new one.
    fn settle<T>(
        &self,
        node: usize,
        slot: &mut Option<Client>,
        result: Result<T, Error>,
    ) -> Result<T, CacheError> {
        let addr = &self.nodes[node].addr;
        match result {
            Err(e @ (Error::Io(_) | Error::Connect(_) | Error::ConnectionClosed)) => {
                *slot = None;
                Err(unavailable(addr, e))
            }
            other => other.map_err(|e| unavailable(addr, e)),
        }
    }

    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        let mut out = vec![None; keys.len()];
        let mut by_node: Vec<Vec<usize>> = vec![Vec::new(); self.nodes.len()];
        for (i, key) in keys.iter().enumerate() {
            by_node[self.ring.node_for(routing_key(key))].push(i);
        }
        for (node, indices) in by_node
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
        {
            let wanted: Vec<&str> = indices.iter().map(|&i| keys[i].as_str()).collect();
            let mut slot = self.checkout(node).await?;
            let result = match slot.as_mut().expect("checked out").get_multi(&wanted).await {
                Err(Error::Protocol(Status::NotFound)) => Ok(Vec::new()),
                other => other,
            };
            let found = self.settle(node, &mut slot, result)?;
            for value in found {
                if let Some(&i) = indices
                    .iter()
                    .find(|&&i| keys[i].as_bytes() == value.key.as_slice())
                {
                    out[i] = value.data;
                }
            }
        }
        Ok(out)
    }

    pub async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let node = self.ring.node_for(routing_key(key));
        let mut slot = self.checkout(node).await?;
        let result = slot
            .as_mut()
            .expect("checked out")
            .set(key, value, ttl_secs(ttl), None)
            .await;
        self.settle(node, &mut slot, result)
    }

    pub async fn add(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, CacheError> {
        let node = self.ring.node_for(routing_key(key));
        let mut slot = self.checkout(node).await?;
        let result = match slot
            .as_mut()
            .expect("checked out")
            .add(key, value, ttl_secs(ttl), None)
            .await
        {
            Ok(()) => Ok(true),
            Err(Error::Protocol(Status::NotStored | Status::Exists)) => Ok(false),
            Err(e) => Err(e),
        };
        self.settle(node, &mut slot, result)
    }

    pub async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let node = self.ring.node_for(routing_key(key));
        let mut slot = self.checkout(node).await?;
        let result = match slot.as_mut().expect("checked out").delete(key).await {
            Err(Error::Protocol(Status::NotFound)) => Ok(()),
            other => other,
        };
        self.settle(node, &mut slot, result)
    }

    pub async fn incr(&self, key: &str, start: u64) -> Result<u64, CacheError> {
        let node = self.ring.node_for(routing_key(key));
        let mut slot = self.checkout(node).await?;
        let client = slot.as_mut().expect("checked out");
        let result = match client.increment(key, 1).await {
            Err(Error::Protocol(Status::NotFound)) => {
                // Absent: start it; if another process started it first, count on from theirs.
                let start_text = start.to_string();
                match client
                    .add(key, start_text.as_str(), ttl_secs(crate::COUNTER_TTL), None)
                    .await
                {
                    Ok(()) => Ok(start),
                    Err(Error::Protocol(Status::NotStored | Status::Exists)) => {
                        client.increment(key, 1).await
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        self.settle(node, &mut slot, result)
    }
}

fn rand_index(n: usize) -> usize {
    rand::random_range(0..n)
}
