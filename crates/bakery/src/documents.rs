//! `bakery documents rebuild|check`: the product documents (Path 2) made again from
//! the tables, or compared with them.

use bakery_app::App;
use clap::Subcommand;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Subcommand)]
pub enum DocumentsCommand {
    /// Makes every product's document again from the tables (progress shown).
    Rebuild,
    /// Compares every product's document with the tables; lists the differences and
    /// exits 1 if there is any.
    Check,
}

/// Products asked for at a time, and documents made at once.
const PAGE: i64 = 1_000;
const AT_ONCE: usize = 8;

pub async fn run(config: &bakery_config::Config, command: DocumentsCommand) -> anyhow::Result<()> {
    let app = App::connect(config).await?;
    let total = app.product_count().await?;
    let bar = ProgressBar::new(total.max(0) as u64).with_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} products ({elapsed}, {per_sec})",
        )?
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    match command {
        DocumentsCommand::Rebuild => {
            bar.set_message("rebuilding");
            for_each_product(&app, &bar, async |app: App, id| {
                app.rebuild_document(id).await.map(|()| None)
            })
            .await?;
            bar.finish_and_clear();
            println!(
                "rebuilt the documents of {} product(s) in {:.1} s",
                bar.position(),
                started.elapsed().as_secs_f64()
            );
        }
        DocumentsCommand::Check => {
            bar.set_message("checking");
            let differences = for_each_product(&app, &bar, async |app: App, id| {
                Ok(app
                    .check_document(id)
                    .await?
                    .map(|d| format!("product {}: {}", d.product_id, d.what)))
            })
            .await?;
            bar.finish_and_clear();
            for difference in &differences {
                println!("{difference}");
            }
            let checked = bar.position();
            if !differences.is_empty() {
                anyhow::bail!(
                    "{} of {checked} product document(s) differ from the tables",
                    differences.len()
                );
            }
            println!(
                "{checked} product document(s) equal the tables ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Runs `each` on every product, [`AT_ONCE`] at a time, page by page in id order;
/// answers what it reported, in id order.
async fn for_each_product(
    app: &App,
    bar: &ProgressBar,
    each: impl AsyncFn(App, i64) -> Result<Option<String>, bakery_app::Error>,
) -> anyhow::Result<Vec<String>> {
    let mut reports = Vec::new();
    let mut cursor = 0;
    loop {
        let ids = app.product_ids(cursor, PAGE).await?;
        let Some(&last) = ids.last() else {
            return Ok(reports);
        };
        let mut done: Vec<(i64, Option<String>)> = futures::stream::iter(ids)
            .map(|id| {
                let app = app.clone();
                let each = &each;
                async move { each(app, id).await.map(|report| (id, report)) }
            })
            .buffer_unordered(AT_ONCE)
            .inspect(|_| bar.inc(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        done.sort_by_key(|(id, _)| *id);
        reports.extend(done.into_iter().filter_map(|(_, report)| report));
        cursor = last;
    }
}
