//! The report's `index.html`: what was run, the figures as a table, the charts
//! (their SVGs beside it, linked to the PNGs) and the raw files. One template,
//! rendered with minijinja (autoescaped).

use std::path::Path;

pub struct Page {
    pub summary: Vec<String>,
    /// The first row is the header.
    pub table: Vec<Vec<String>>,
    /// Chart stems: `<stem>.svg` and `<stem>.png` are in the report folder.
    pub charts: Vec<String>,
    /// Raw figures in the report folder (results.json, CSV, ...).
    pub files: Vec<String>,
}

const TEMPLATE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th { background: #f4f4f4; } td:last-child { text-align: left; } img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
</style></head><body>
<h1>{{ title }}</h1>
{% for line in summary %}<p>{{ line }}</p>
{% endfor %}
<table><tr>{% for cell in head %}<th>{{ cell }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% for chart in charts %}<p><a href="{{ chart }}.png"><img src="{{ chart }}.svg" alt="{{ chart }}"></a></p>
{% endfor %}
<p>Raw figures:{% for file in files %} <a href="{{ file }}">{{ file }}</a>{% endfor %}</p>
</body></html>
"#;

pub fn write(dir: &Path, title: &str, page: &Page) -> anyhow::Result<()> {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    env.add_template("report", TEMPLATE)?;
    let (head, rows) = page
        .table
        .split_first()
        .map_or((&[][..], &[][..]), |(h, r)| (&h[..], r));
    let html = env.get_template("report")?.render(minijinja::context! {
        title,
        summary => page.summary.clone(),
        head => head.to_vec(),
        rows => rows.to_vec(),
        charts => page.charts.clone(),
        files => page.files.clone(),
    })?;
    std::fs::write(dir.join("index.html"), html)?;
    Ok(())
}
