//! Reading a process's metrics (Prometheus text, parsed with `prometheus-parse`)
//! and a load balancer's members.

use std::time::Duration;

/// Longest a process may take to answer: a slow one is shown as not answering
/// rather than holding the picture back.
const LIMIT: Duration = Duration::from_millis(800);

/// One process's metrics.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    samples: Vec<prometheus_parse::Sample>,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().map(|line| Ok(line.to_string()));
        let samples = prometheus_parse::Scrape::parse(lines)
            .map(|scrape| scrape.samples)
            .unwrap_or_default();
        Self { samples }
    }

    /// The sum of `name` over the samples whose labels match all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).sum()
    }

    /// The sum of `name` over the samples whose label `label` passes `keep`.
    pub fn sum_where(&self, name: &str, label: &str, keep: impl Fn(&str) -> bool) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get(label).is_some_and(&keep))
            .filter_map(|s| value(&s.value))
            .sum()
    }

    /// The largest value of `name` with those labels, if any.
    pub fn max(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels).reduce(f64::max)
    }

    /// The values `label` takes in the samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| s.labels.get(label).map(str::to_string))
            .collect();
        values.sort();
        values.dedup();
        values
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = f64> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.metric == name)
            .filter(move |s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| value(&s.value))
    }
}

/// A counter's, gauge's or untyped sample's value (histograms have none).
fn value(value: &prometheus_parse::Value) -> Option<f64> {
    match *value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(v),
        _ => None,
    }
}

/// `GET http://{addr}{path}` within the limit; `None` when it did not answer 200.
pub async fn get(client: &reqwest::Client, addr: &str, path: &str) -> Option<String> {
    let call = async {
        let response = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    };
    tokio::time::timeout(LIMIT, call).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_maxima_follow_the_labels() {
        let text = "# TYPE bakery_http_requests_total counter\n\
            bakery_http_requests_total{route=\"/api/ping\",status=\"200\"} 7\n\
            bakery_http_requests_total{route=\"/api/ping\",status=\"503\"} 2\n\
            bakery_http_requests_total{route=\"/api/me\",status=\"200\"} 5\n\
            # TYPE bakery_db_replica_lag_bytes gauge\n\
            bakery_db_replica_lag_bytes{replica=\"r1\"} 120\n\
            bakery_db_replica_lag_bytes{replica=\"r2\"} 40\n";
        let metrics = Metrics::parse(text);
        assert_eq!(metrics.sum("bakery_http_requests_total", &[]), 14.0);
        assert_eq!(
            metrics.sum("bakery_http_requests_total", &[("route", "/api/ping")]),
            9.0
        );
        assert_eq!(
            metrics.sum("bakery_http_requests_total", &[("status", "200")]),
            12.0
        );
        assert_eq!(
            metrics.sum_where("bakery_http_requests_total", "status", |s| s
                .starts_with('5')),
            2.0
        );
        assert_eq!(metrics.max("bakery_db_replica_lag_bytes", &[]), Some(120.0));
        assert_eq!(metrics.max("bakery_nothing", &[]), None);
        assert_eq!(
            metrics.label_values("bakery_db_replica_lag_bytes", "replica"),
            vec!["r1", "r2"]
        );
        assert_eq!(Metrics::parse("not metrics at all {").sum("x", &[]), 0.0);
    }
}
