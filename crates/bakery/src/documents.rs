//! `bakery documents rebuild|check`: the product documents (Path 2) made again from
//! the tables, or compared with them.

use bakery_app::App;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Subcommand)]
pub enum DocumentsCommand {
    /// Makes every product's document again from the tables (progress shown).
    Rebuild,
    /// Compares every product's document with the tables; lists the differences and
    /// exits 1 if there is any.
    Check,
}

pub async fn run(config: &bakery_config::Config, command: DocumentsCommand) -> anyhow::Result<()> {
    let app = App::connect(config).await?;
    let bar = ProgressBar::new(app.product_count().await?.max(0) as u64).with_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:30}] {pos}/{len} products ({elapsed}, {per_sec})",
        )?
        .progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    match command {
        DocumentsCommand::Rebuild => {
            bar.set_message("rebuilding");
            let rebuilt = app.rebuild_documents(|| bar.inc(1)).await?;
            bar.finish_and_clear();
            println!(
                "rebuilt the documents of {rebuilt} product(s) in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        DocumentsCommand::Check => {
            bar.set_message("checking");
            let (checked, differences) = app.check_documents(|| bar.inc(1)).await?;
            bar.finish_and_clear();
            for difference in &differences {
                println!("product {}: {}", difference.product_id, difference.what);
            }
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
