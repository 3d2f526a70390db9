//! The `bakery` executable: parses the command line, loads the configuration once,
//! and hands over to a role. No logic of its own. A configuration problem ends the
//! process with one line naming the variable and exit status 2; any other failure
//! with one line and exit status 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bakery_config::{Config, ConfigError};
use clap::{Args, Parser, Subcommand};

mod documents;
mod shutdown;

/// mimalloc instead of glibc's allocator: the proxy and the clones allocate small
/// buffers per request from several threads, where glibc's arenas spend measurably
/// more time (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bakery",
    version,
    about = "A scalable web bakery: load balancer, stateless clones, shared sessions."
)]
struct Cli {
    /// A TOML file with the same keys as the BAKERY_* variables (which still win).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole topology on this machine: load balancer, web clones, email and push.
    Up {
        /// Where the load balancer listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// How many web clones to run.
        #[arg(long, default_value_t = 3)]
        clones: usize,
        /// How many job workers to run.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Do not load the demo bakery into an empty catalog.
        #[arg(long)]
        no_demo: bool,
    },
    /// Run the HTTP load balancer.
    Lb {
        #[command(flatten)]
        role: RoleArgs,
        /// A backend: POOL=ID@HOST:PORT (repeatable), e.g. web=web-1@127.0.0.1:9001.
        #[arg(long = "backend", value_name = "POOL=ID@ADDR")]
        backends: Vec<String>,
        /// A path prefix served by a pool other than `web`: /PREFIX=POOL (repeatable).
        #[arg(long = "route", value_name = "/PREFIX=POOL")]
        routes: Vec<String>,
        /// Where the membership API (`PUT`/`DELETE /lb/backends/...`) listens: never on
        /// the public address; port 0 picks a free one (printed as `admin=` on the
        /// `listening` line).
        #[arg(
            long = "admin-listen",
            default_value = "127.0.0.1:0",
            value_name = "IP:PORT"
        )]
        admin_listen: String,
    },
    /// Run one web clone.
    Web {
        #[command(flatten)]
        role: RoleArgs,
    },
    /// Run the email service: RSVP events in, mail out (SMTP or .eml files).
    Email {
        #[command(flatten)]
        role: RoleArgs,
    },
    /// Run the push service: notifications to browsers as Server-Sent Events.
    Push {
        #[command(flatten)]
        role: RoleArgs,
    },
    /// Run a job worker.
    Worker {
        #[command(flatten)]
        role: RoleArgs,
    },
    /// Load generation and reports (each run ends with a `result <json>` line).
    Bench {
        #[command(subcommand)]
        scenario: BenchScenario,
    },
    /// List jobs, or queue a failed or cancelled one again.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Apply schema migrations to the primary database, create the admin account, and exit.
    Migrate,
    /// Inspect and replay dead letters.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Rebuild the de-normalised product documents, or check them against the tables.
    Documents {
        #[command(subcommand)]
        command: documents::DocumentsCommand,
    },
}

#[derive(Subcommand)]
enum BenchScenario {
    /// Enqueue N jobs for W workers it starts, wait for all, report jobs/s and latency
    /// (and against Celery with `--peer celery`).
    Jobs(bakery_bench::jobs::Options),
    /// One scenario through a load balancer in front of 1, 2, 4, ... clones, each
    /// with the same CPU budget: throughput, latency, efficiency, the Universal
    /// Scalability Law fitted, the saturated resource named, plots.
    Scale(bakery_bench::scale::Options),
    /// Latency of one request alone, then at rising arrival rates (open model,
    /// coordinated omission corrected): where the knee is.
    Latency(bakery_bench::latency::Options),
    /// Our load balancer against nginx before the same clones, rounds alternating.
    Lb(bakery_bench::lb::Options),
    /// One scenario against a baseline (`ping` by default) on the same topology,
    /// rounds alternating: requests/s and latency side by side, and their ratio.
    Compare(bakery_bench::compare::Options),
    /// N notification streams through the load balancer, one RSVP per user: how
    /// soon every stream carries it, and the push process's memory per stream.
    Push(bakery_bench::push::Options),
    /// A product read on a large catalog, four ways side by side: from the normalised
    /// tables, from the de-normalised documents, and each with the cache in front.
    ReadModels(bakery_bench::read_models::Options),
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs, newest first: id, kind, state, progress, attempts, worker, created, error.
    List {
        /// Only jobs in this state (queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Queue a failed or cancelled job again (attempts reset).
    Retry { id: i64 },
}

#[derive(Subcommand)]
enum DeadCommand {
    /// List dead letters: queue, message id, type, attempts, when, last error.
    List {
        /// Only this queue's (e.g. email.rsvp).
        #[arg(long)]
        queue: Option<String>,
    },
    /// Put dead letters back on their queue; prints how many.
    Replay {
        /// Every dead letter (of --queue, or of all queues).
        #[arg(long, conflicts_with = "id", required_unless_present = "id")]
        all: bool,
        /// Only the dead letter with this message id.
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        queue: Option<String>,
    },
}

#[derive(Args)]
struct RoleArgs {
    /// Address to listen on; port 0 picks a free one (printed on the `listening` line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Name of this process in logs and in `x-served-by`; default: role and a number.
    #[arg(long)]
    id: Option<String>,
}

fn main() -> ExitCode {
    // What the service writes (databases, sessions, cache, media, mail) is its own:
    // directories 0700, files 0600.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    // No transparent huge pages (for this process and those it starts): mimalloc
    // asks for them for its arenas (`madvise(MADV_HUGEPAGE)`, its `allow_thp`
    // option), and each 2 MiB page touched for a few kilobytes stays resident whole —
    // 18 MiB of a clone's 21 MiB of its own memory after `bakery up` (6 MiB without).
    // Our heaps are small; huge pages buy them nothing.
    let _ = nix::sys::prctl::set_thp_disable(true);
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => return fail_config(&error),
    };
    bakery_telemetry::init_logging(&config.log);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if config.runtime_threads > 0 {
        builder.worker_threads(config.runtime_threads);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bakery: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<ConfigError>() {
            Some(config_error) => fail_config(config_error),
            None => {
                eprintln!("bakery: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn fail_config(error: &ConfigError) -> ExitCode {
    eprintln!("bakery: {error}");
    ExitCode::from(2)
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            listen,
            clones,
            workers,
            no_demo,
        } => {
            listen.parse::<SocketAddr>().map_err(|_| {
                ConfigError::new("--listen", format!("not an IP:port address: {listen:?}"))
            })?;
            let bootstrapped = bakery_db::bootstrap(&config, !no_demo).await?;
            report(&bootstrapped);
            if bootstrapped.demo_loaded {
                // Its photos are image jobs: the workers make them once they run.
                let app = bakery_app::App::connect(&config).await?;
                let queued = app.queue_demo_photos().await?;
                app.close().await;
                println!("demo photos: {queued} queued for the workers");
            }
            bakery_web::prepare_stores(&config).await?;
            let options = bakery_supervisor::UpOptions {
                listen,
                clones,
                workers,
                config_file: cli.config,
            };
            bakery_supervisor::run(options, bakery_telemetry::shutdown_signal()).await
        }
        Command::Lb {
            role,
            backends,
            routes,
            admin_listen,
        } => {
            let topology = bakery_lb::Topology {
                backends: backends
                    .iter()
                    .enumerate()
                    .map(|(i, raw)| bakery_lb::BackendSpec::parse(raw, i + 1))
                    .collect::<Result<_, _>>()?,
                routes: routes
                    .iter()
                    .map(|raw| bakery_lb::RouteSpec::parse(raw))
                    .collect::<Result<_, _>>()?,
            };
            let admin_addr: SocketAddr = admin_listen.parse().map_err(|_| {
                ConfigError::new(
                    "--admin-listen",
                    format!("not an IP:port address: {admin_listen:?}"),
                )
            })?;
            let admin = listen_deep(admin_addr).map_err(|e| {
                ConfigError::new(
                    "--admin-listen",
                    format!("cannot listen on {admin_addr}: {e}"),
                )
            })?;
            let extra = format!(" admin={}", admin.local_addr()?);
            let (id, listener) = bind_with("lb", &role, &extra).await?;
            bakery_lb::run(
                config,
                &id,
                topology,
                listener,
                admin,
                shutdown::requested(),
            )
            .await
        }
        Command::Web { role } => {
            let (id, listener) = bind("web", &role).await?;
            bakery_web::run(config, &id, listener, shutdown::requested()).await
        }
        Command::Email { role } => {
            let (id, listener) = bind("email", &role).await?;
            bakery_email::run(config, &id, listener, shutdown::requested()).await
        }
        Command::Push { role } => {
            let (id, listener) = bind("push", &role).await?;
            bakery_push::run(config, &id, listener, shutdown::requested()).await
        }
        Command::Worker { role } => {
            let (id, listener) = bind("worker", &role).await?;
            bakery_worker::run(config, &id, listener, shutdown::requested()).await
        }
        Command::Jobs { command } => jobs(&config, command).await,
        Command::Bench {
            scenario: BenchScenario::Jobs(mut options),
        } => {
            options.config_file = cli.config.clone();
            bakery_bench::jobs::run(&config, options).await
        }
        Command::Bench {
            scenario: BenchScenario::Scale(mut options),
        } => {
            options.config_file = cli.config.clone();
            bakery_bench::scale::run(&config, options).await
        }
        Command::Bench {
            scenario: BenchScenario::Push(mut options),
        } => {
            options.config_file = cli.config.clone();
            bakery_bench::push::run(&config, options).await
        }
        Command::Bench {
            scenario: BenchScenario::Compare(mut options),
        } => {
            options.config_file = cli.config.clone();
            bakery_bench::compare::run(&config, options).await
        }
        Command::Bench {
            scenario: BenchScenario::ReadModels(mut options),
        } => {
            options.config_file = cli.config.clone();
            bakery_bench::read_models::run(&config, options).await
        }
        Command::Bench {
            scenario: BenchScenario::Latency(mut options),
        } => {
            options.config_file = cli.config.clone();
            bakery_bench::latency::run(&config, options).await
        }
        Command::Bench {
            scenario: BenchScenario::Lb(mut options),
        } => {
            options.config_file = cli.config.clone();
            bakery_bench::lb::run(&config, options).await
        }
        Command::Dead { command } => dead(&config, command).await,
        Command::Documents { command } => documents::run(&config, command).await,
        Command::Migrate => {
            report(&bakery_db::bootstrap(&config, false).await?);
            println!("migrated {}", config.database.url.redacted());
            Ok(())
        }
    }
}

/// `bakery jobs list|retry`.
async fn jobs(config: &Config, command: JobsCommand) -> anyhow::Result<()> {
    use bakery_core::job::JobState;
    let app = bakery_app::App::connect(config).await?;
    match command {
        JobsCommand::List { state, limit } => {
            let state = state
                .map(|s| {
                    JobState::parse(&s).ok_or_else(|| {
                        ConfigError::new(
                            "--state",
                            format!("no state {s:?}; the states are queued, running, succeeded, failed, cancelled"),
                        )
                    })
                })
                .transpose()?;
            let jobs = app.jobs(state, limit.clamp(1, 10_000)).await?;
            println!(
                "{:>8}  {:<8} {:<10} {:>8} {:>8}  {:<12} {:<24} error",
                "id", "kind", "state", "progress", "attempts", "worker", "created_at"
            );
            for job in &jobs {
                println!(
                    "{:>8}  {:<8} {:<10} {:>7}% {:>8}  {:<12} {:<24} {}",
                    job.id,
                    job.kind,
                    job.state.as_str(),
                    job.progress,
                    job.attempts,
                    job.worker.as_deref().unwrap_or("-"),
                    bakery_core::clock::to_rfc3339(job.created_at),
                    job.error.as_deref().unwrap_or("")
                );
            }
            println!("{} job(s)", jobs.len());
        }
        JobsCommand::Retry { id } => {
            if !app.retry_job(id).await? {
                return Err(ConfigError::new(
                    "ID",
                    format!("job {id} does not exist or is not failed or cancelled"),
                )
                .into());
            }
            println!("queued job {id} again");
        }
    }
    Ok(())
}

/// `bakery dead list|replay`.
async fn dead(config: &Config, command: DeadCommand) -> anyhow::Result<()> {
    let queue_of = |name: &Option<String>| -> Result<Option<&'static str>, ConfigError> {
        name.as_deref()
            .map(|q| {
                bakery_broker::topology::known_queue(q).ok_or_else(|| {
                    let known = bakery_broker::topology::QUEUES.join(", ");
                    ConfigError::new("--queue", format!("no queue {q:?}; the queues are {known}"))
                })
            })
            .transpose()
    };
    let db = bakery_db::Database::connect_configured(config).await?;
    db.check_schema()
        .await
        .map_err(|e| ConfigError::new("BAKERY_DATABASE_URL", e))?;
    let broker = bakery_broker::Broker::connect(&config.broker, &db).await?;
    broker.check(&config.broker).await?;
    match command {
        DeadCommand::List { queue } => {
            let letters = broker.dead_letters(queue_of(&queue)?).await?;
            println!(
                "{:<20} {:<32} {:<16} {:>8}  {:<24} error",
                "queue", "message_id", "type", "attempts", "died_at"
            );
            for letter in &letters {
                println!(
                    "{:<20} {:<32} {:<16} {:>8}  {:<24} {}",
                    letter.queue,
                    letter.message_id,
                    letter.kind,
                    letter.attempts,
                    bakery_core::clock::to_rfc3339(letter.died_at),
                    letter.error
                );
            }
            println!("{} dead letter(s)", letters.len());
        }
        DeadCommand::Replay { all: _, id, queue } => {
            let replayed = broker.replay(queue_of(&queue)?, id.as_deref()).await?;
            println!("replayed {replayed}");
        }
    }
    broker.close().await;
    Ok(())
}

/// Tells the operator what bootstrapping the database did.
fn report(done: &bakery_db::Bootstrapped) {
    use bakery_db::accounts::AdminBootstrap;
    match &done.admin {
        AdminBootstrap::Generated(password) => println!(
            "admin account created: username=admin password={password} (shown once; BAKERY_ADMIN_PASSWORD chooses it)"
        ),
        AdminBootstrap::Created => {
            println!("admin account created: username=admin (password from BAKERY_ADMIN_PASSWORD)")
        }
        AdminBootstrap::Existing => {}
    }
    if done.demo_loaded {
        println!(
            "demo bakery loaded: 12 products with reviews, 3 baking classes (--no-demo skips this)"
        );
    }
}

/// Binds the role's address and prints `listening role=.. id=.. addr=..`, the line
/// the supervisor reads to learn a port chosen by the system.
async fn bind(role: &str, args: &RoleArgs) -> anyhow::Result<(String, tokio::net::TcpListener)> {
    bind_with(role, args, "").await
}

/// [`bind`], with `extra` (` key=value` pairs) at the end of the `listening` line.
async fn bind_with(
    role: &str,
    args: &RoleArgs,
    extra: &str,
) -> anyhow::Result<(String, tokio::net::TcpListener)> {
    let addr: SocketAddr = args.listen.parse().map_err(|_| {
        ConfigError::new(
            "--listen",
            format!("not an IP:port address: {:?}", args.listen),
        )
    })?;
    let listener = listen_deep(addr)
        .map_err(|e| ConfigError::new("--listen", format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr()?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("{role}-{}", bound.port()));
    bakery_db::name_connections(&id);
    let nofile = bakery_telemetry::raise_open_files_limit();
    println!("listening role={role} id={id} addr={bound}{extra} nofile={nofile}");
    Ok((id, listener))
}

/// Listens on `addr` with a deep accept queue (the kernel caps it at `somaxconn`).
/// With tokio's default of 128, a burst of connections (300 logins at once through
/// the load balancer) overflows it, the kernel drops the SYNs beyond, and each of
/// those connections waits a second for its retry: the load balancer's connect
/// timeout then takes a healthy clone for a dead one.
fn listen_deep(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
