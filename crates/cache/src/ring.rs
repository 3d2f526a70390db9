//! Consistent hashing in the ketama way: each node owns 160 points on a circle
//! (four per SHA-256 digest of `node-i`), a key belongs to the first point at or after
//! its own hash. Adding or removing a node moves only about 1/n of the keys.

use sha2::{Digest, Sha256};

pub struct Ring {
    points: Vec<(u32, usize)>,
}

const POINTS_PER_NODE: usize = 160;

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Ring {
    pub fn new(nodes: &[String]) -> Self {
        let mut points = Vec::with_capacity(nodes.len() * POINTS_PER_NODE);
        for (index, node) in nodes.iter().enumerate() {
            for i in 0..POINTS_PER_NODE / 4 {
                let digest = hash(format!("{node}-{i}").as_bytes());
                for k in 0..4 {
                    let point = u32::from_le_bytes([
                        digest[k * 4],
                        digest[k * 4 + 1],
                        digest[k * 4 + 2],
                        digest[k * 4 + 3],
                    ]);
                    points.push((point, index));
                }
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The index of the node that owns `key`.
    pub fn node_for(&self, key: &str) -> usize {
        let digest = hash(key.as_bytes());
        let point = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
        let at = self.points.partition_point(|(p, _)| *p < point);
        self.points
            .get(at)
            .or_else(|| self.points.first())
            .map(|(_, node)| *node)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_nodes_and_a_new_node_moves_few() {
        let three: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:11211")).collect();
        let ring = Ring::new(&three);
        let keys: Vec<String> = (0..3000).map(|i| format!("Product:{i}")).collect();
        let mut counts = [0usize; 3];
        for k in &keys {
            counts[ring.node_for(k)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "roughly even: {counts:?}");

        let mut four = three.clone();
        four.push("10.0.0.4:11211".into());
        let bigger = Ring::new(&four);
        let moved = keys
            .iter()
            .filter(|k| bigger.node_for(k) != ring.node_for(k))
            .count();
        assert!(
            moved < 1100,
            "about a quarter of the keys move, not all: {moved}"
        );
        assert!(
            keys.iter()
                .all(|k| bigger.node_for(k) == ring.node_for(k) || bigger.node_for(k) == 3),
            "keys only move to the new node"
        );
    }
}
