//! Reading a process's metrics (the Prometheus text format) and a load balancer's
//! members.

use std::time::Duration;

/// Longest a process may take to answer: a slow one is shown as not answering
/// rather than holding the picture back.
const LIMIT: Duration = Duration::from_millis(800);

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One process's metrics.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Reads the Prometheus text format; a line it cannot read is left out.
    pub fn parse(text: &str) -> Self {
        Self {
            samples: text.lines().filter_map(sample).collect(),
        }
    }

    /// The sum of `name` over the samples whose labels match all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).sum()
    }

    /// The sum of `name` over the samples whose label `label` passes `keep`.
    pub fn sum_where(&self, name: &str, label: &str, keep: impl Fn(&str) -> bool) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.label(label).is_some_and(&keep))
            .map(|s| s.value)
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
            .filter(|s| s.name == name)
            .filter_map(|s| s.label(label).map(str::to_string))
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
            .filter(move |s| s.name == name)
            .filter(move |s| labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
            .map(|s| s.value)
    }
}

/// One line of the text format as a sample; `None` for comments, blank lines and
/// what does not parse. Label values may hold any character, `{` and `}` included
/// (our routes do: `/api/products/{id}`), with `\\`, `\"` and `\n` escaped.
fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (at, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &inner[at + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
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

    #[test]
    fn label_values_may_hold_braces_quotes_and_commas() {
        let text = "bakery_http_requests_total{route=\"/api/products/{id}\",status=\"200\"} 15734\n\
            odd{a=\"x,y\",b=\"say \\\"hi\\\"\"} 2 1700000000000\n\
            plain 3.5\n\
            infinite{le=\"+Inf\"} +Inf\n";
        let metrics = Metrics::parse(text);
        assert_eq!(
            metrics.sum(
                "bakery_http_requests_total",
                &[("route", "/api/products/{id}")]
            ),
            15734.0
        );
        assert_eq!(
            metrics.sum("odd", &[("a", "x,y"), ("b", "say \"hi\"")]),
            2.0
        );
        assert_eq!(metrics.sum("plain", &[]), 3.5);
        assert_eq!(
            metrics.max("infinite", &[("le", "+Inf")]),
            Some(f64::INFINITY)
        );
    }
}
