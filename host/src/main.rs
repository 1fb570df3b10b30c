//! The `firstcome` command: `serve`, `migrate`, `campaign validate | rebuild`,
//! `dlt list | show | replay`, `plugin new | test`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firstcome::app::{App, open_backends, open_bus};
use firstcome_platform::config::Config;
use firstcome_platform::watcher::load_file;

#[cfg(feature = "kafka")]
mod kafka_guard;

/// mimalloc instead of glibc's malloc: the host allocates per request, per event and per
/// plugin call from many threads (see the workspace's `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// First-come-first-served coupon issuance.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML); `FIRSTCOME_*` variables override it, flags override both.
    #[arg(long, global = true, env = "FIRSTCOME_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the host: HTTP API, issuers, outbox relay, consumers, campaign watcher.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080; env FIRSTCOME_LISTEN].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Embedded state directory [default: ./data; env FIRSTCOME_DATA_DIR].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Watched folder of campaign files [default: DATA_DIR/campaigns; env FIRSTCOME_CAMPAIGNS_DIR].
        #[arg(long)]
        campaigns: Option<PathBuf>,
        /// Folder plugin files are read from [default: the campaign folder; env FIRSTCOME_PLUGINS__DIR].
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
    /// Apply the database migrations and exit.
    Migrate,
    /// Campaign files and state.
    #[command(subcommand)]
    Campaign(CampaignCommand),
    /// Dead letters: events every retry failed on, in `{topic}.DLT`.
    #[command(subcommand)]
    Dlt(DltCommand),
    /// Consumer plugins (WebAssembly components).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Print the REST API's OpenAPI document (what a host serves at /api/openapi.json), for
    /// generating clients without running a host.
    Openapi,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Create a plugin project NAME (in the current folder, or --dir) that builds and passes
    /// its own test and `plugin test` with its sample event as it is.
    New {
        name: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// `rust` (a crate for cargo), `python` (a module for componentize-py and pytest) or `js`
        /// (a module for componentize-js and node's test runner).
        #[arg(long, default_value = "rust")]
        lang: firstcome_plugin::scaffold::Lang,
    },
    /// Run a plugin on one event in the host's sandbox, printing each capability call and
    /// the result. Capabilities only record; nothing is sent.
    Test {
        /// The component (`.wasm`).
        plugin: PathBuf,
        /// The event: an envelope as the host publishes it, or a message as `dlt show` prints.
        #[arg(long)]
        event: PathBuf,
        /// A setting, `KEY=VALUE` (repeatable).
        #[arg(long = "setting", value_parser = key_value)]
        settings: Vec<(String, String)>,
        /// Capabilities to grant, comma-separated [default: all].
        #[arg(long, value_delimiter = ',')]
        grants: Option<Vec<String>>,
        /// The campaign's capacity the event reports.
        #[arg(long, default_value_t = 100)]
        capacity: i64,
        #[arg(long)]
        timeout_ms: Option<u64>,
        #[arg(long)]
        memory_mb: Option<u32>,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?}: write a setting as KEY=VALUE"))
}

#[derive(Debug, Subcommand)]
enum DltCommand {
    /// List open dead letters (neither replayed nor discarded): where each came from, which
    /// group failed it and why.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Which to list: open (default), settled (replayed or discarded), all.
        #[arg(long, value_enum, default_value_t = ListShow::Open)]
        show: ListShow,
    },
    /// Print one dead letter in full (its payload holds the shopper's personal data).
    Show { event_id: String },
    /// Send dead letters back to their original topic, after the cause is fixed. Groups that
    /// handled the event before drop it again; the group that failed it handles it.
    Replay {
        /// The dead letters to replay, by event id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        event_ids: Vec<String>,
        /// Replay every open dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Settle dead letters without handling them: they leave the open list, and the
    /// embedded log may purge them.
    Discard {
        /// The dead letters to discard, by event id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        event_ids: Vec<String>,
        /// Discard every open dead letter.
        #[arg(long)]
        all: bool,
    },
}

/// Which dead letters `dlt list` prints.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ListShow {
    Open,
    Settled,
    All,
}

#[derive(Debug, Subcommand)]
enum CampaignCommand {
    /// Check campaign files without applying them; exits non-zero if any is invalid.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Rebuild a campaign's admission state (Redis) from the coupons in the database.
    Rebuild {
        /// The campaign file, `{campaign_id}.toml`.
        file: PathBuf,
        /// Rebuild even when Redis still holds the campaign: requests queued but not yet
        /// issued are dropped, and their users may ask again.
        #[arg(long)]
        force: bool,
    },
}

/// The version in force of the campaign a rebuild names: the database's copy, which must agree
/// with the file in everything the admission queue holds (capacity, window, shards). A file
/// the hosts do not run would give Redis a capacity or layout the database then refuses.
async fn version_in_force(
    store: &firstcome_store::Store,
    file: &firstcome_core::campaign::Campaign,
) -> anyhow::Result<firstcome_core::campaign::Campaign> {
    let id = file.id();
    let Some(applied) = store.applied_campaign(id).await? else {
        anyhow::bail!(
            "{id}: no campaign of this id was ever applied (a host applies the files of its \
             campaigns folder); nothing rebuilt"
        );
    };
    let differences: Vec<String> = [
        (
            "capacity",
            file.capacity().to_string(),
            applied.capacity().to_string(),
        ),
        (
            "opens_at",
            format!("{:?}", file.opens_at()),
            format!("{:?}", applied.opens_at()),
        ),
        (
            "closes_at",
            format!("{:?}", file.closes_at()),
            format!("{:?}", applied.closes_at()),
        ),
        (
            "shards",
            file.shards().to_string(),
            applied.shards().to_string(),
        ),
    ]
    .into_iter()
    .filter(|(_, f, a)| f != a)
    .map(|(field, f, a)| format!("{field}: file {f}, in force {a}"))
    .collect();
    anyhow::ensure!(
        differences.is_empty(),
        "{id}: the file differs from the version in force ({}); let the hosts apply the file \
         first (they refuse what cannot change, such as shards), or rebuild with the version \
         in force; nothing rebuilt",
        differences.join("; ")
    );
    Ok(applied)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Openapi = cli.command {
        println!("{}", firstcome_api::openapi().to_pretty_json()?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut config = Config::load(cli.config.as_deref()).context("reading configuration")?;
    if let Command::Plugin(PluginCommand::New { name, dir, lang }) = &cli.command {
        return match firstcome_plugin::scaffold::create_in(name, dir, *lang) {
            Ok(path) => {
                println!(
                    "created {}; see its README.md to build and test it",
                    path.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(2))
            }
        };
    }
    if let Command::Serve {
        listen,
        data_dir,
        campaigns,
        plugins,
    } = &cli.command
    {
        if let Some(p) = plugins {
            config.plugins.dir = Some(p.clone());
        }
        if let Some(l) = listen {
            config.listen = *l;
        }
        if let Some(d) = data_dir {
            config.data_dir = d.clone();
        }
        if let Some(c) = campaigns {
            config.campaigns_dir = Some(c.clone());
        }
    }
    firstcome::telemetry::init(config.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve { .. } => serve(config).await,
            Command::Migrate => {
                let (store, _) = open_backends(&config).await?;
                store.close().await;
                println!("migrations applied");
                Ok(ExitCode::SUCCESS)
            }
            Command::Campaign(CampaignCommand::Rebuild { file, force }) => {
                let campaign = load_file(&file).map_err(anyhow::Error::msg)?;
                let (store, admission) = open_backends(&config).await?;
                let applied = version_in_force(&store, &campaign).await?;
                let issued = store.issued_users(campaign.id()).await?;
                let rebuilt = admission.sync_campaign(&applied, &issued, force).await?;
                if admission.kind() == "embedded" {
                    println!("the embedded admission queue is rebuilt by every start; nothing to do");
                } else if rebuilt {
                    println!("{}: rebuilt from {} issued coupons", campaign.id(), issued.len());
                } else {
                    println!("{}: Redis holds the campaign; capacity and window updated (use --force to rebuild)", campaign.id());
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Campaign(CampaignCommand::Validate { files }) => Ok(validate(&files, &config).await),
            Command::Dlt(command) => dlt(&config, command).await,
            Command::Plugin(PluginCommand::Test {
                plugin,
                event,
                settings,
                grants,
                capacity,
                timeout_ms,
                memory_mb,
            }) => {
                let grants = grants
                    .map(|names| {
                        names
                            .iter()
                            .map(|n| {
                                serde_json::from_value(serde_json::Value::String(n.clone())).map_err(|_| {
                                    anyhow::anyhow!("--grants: unknown capability {n:?}; use kv, email, push, history, stats")
                                })
                            })
                            .collect::<anyhow::Result<_>>()
                    })
                    .transpose()?;
                let event = std::fs::read_to_string(&event)
                    .with_context(|| format!("reading the event {}", event.display()))?;
                let run = firstcome_plugin::recording::TestRun {
                    settings: settings.into_iter().collect(),
                    grants,
                    timeout_ms,
                    memory_mb,
                    capacity,
                };
                let outcome = firstcome_plugin::recording::run(&plugin, &event, run).await?;
                Ok(if outcome.result.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
            }
            Command::Plugin(PluginCommand::New { .. }) | Command::Openapi => {
                unreachable!("handled above")
            }
        }
    })
}

/// Checks each file, and loads each plugin it names the way the host would (without
/// running it on an event).
async fn validate(files: &[PathBuf], config: &Config) -> ExitCode {
    let mut ok = true;
    for file in files {
        let checked = match load_file(file) {
            Ok(c) => {
                // As a host serving the file's folder would read its plugins.
                let folder = file.parent().map(PathBuf::from).unwrap_or_default();
                let files = firstcome_plugin::PluginFiles::new(
                    config.plugins.dir.as_deref().unwrap_or(&folder),
                    &config.data_dir,
                    &folder,
                );
                firstcome_plugin::recording::check_plugins(&c, &files)
                    .await
                    .map(|plugins| (c, plugins))
                    .map_err(|e| format!("{}: {e}", file.display()))
            }
            Err(reason) => Err(reason),
        };
        match checked {
            Ok((c, plugins)) => println!(
                "{}: ok (campaign {:?}, capacity {}{})",
                file.display(),
                c.id(),
                c.capacity(),
                plugins
                    .iter()
                    .map(|(role, version)| format!(", {role} plugin {version}"))
                    .collect::<String>()
            ),
            Err(reason) => {
                ok = false;
                eprintln!("{reason}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    tracing::info!(?config, "starting");
    let app = App::build(config).await?;
    let token = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn dlt(config: &Config, command: DltCommand) -> anyhow::Result<ExitCode> {
    use firstcome_platform::dead_letters::{DeadLetterError, DeadLetters, Show, Which};
    let (store, _) = open_backends(config).await?;
    let bus = open_bus(config, &store).await?;
    let letters = DeadLetters::new(&store, &*bus, &config.outbox.topic);
    let topic = letters.topic().to_owned();
    let which = |event_ids: Vec<String>, all: bool| {
        if all {
            Which::AllOpen
        } else {
            Which::Events(event_ids)
        }
    };
    let acted = match command {
        DltCommand::List { limit, show } => {
            let show = match show {
                ListShow::Open => Show::Open,
                ListShow::Settled => Show::Settled,
                ListShow::All => Show::All,
            };
            let (listed, total) = letters.list(show, limit).await?;
            println!("{total} dead letters ({show:?}) in {topic}");
            let or_blank = |v: &Option<String>| v.clone().unwrap_or_default();
            let number = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
            for d in listed {
                let settled = d
                    .settled
                    .map(|s| format!("  [{:?} by {}]", s.outcome, s.actor).to_lowercase())
                    .unwrap_or_default();
                // Every text is escaped: a header (a plugin's error, or anything another
                // producer wrote) must not drive the terminal it is printed on.
                println!(
                    "{}  from {}[{}]@{}  group {}  after {} tries: {}{settled}",
                    d.event_id,
                    or_blank(&d.original_topic),
                    number(d.original_partition.map(i64::from)),
                    number(d.original_offset),
                    or_blank(&d.consumer_group),
                    number(d.attempts.map(i64::from)),
                    d.error,
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        DltCommand::Show { event_id } => {
            let found = letters.messages_of(&event_id).await?;
            if found.is_empty() {
                eprintln!(
                    "no dead letter with event id {} in {topic}",
                    firstcome_core::bounded::escaped(&event_id)
                );
                return Ok(ExitCode::from(2));
            }
            for m in found {
                println!("{}", serde_json::to_string_pretty(&m)?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        DltCommand::Replay { event_ids, all } => letters
            .replay(&which(event_ids, all), firstcome_platform::audit::CLI_ACTOR)
            .await
            .map(|n| format!("replayed {n} dead letters")),
        DltCommand::Discard { event_ids, all } => letters
            .discard(&which(event_ids, all), firstcome_platform::audit::CLI_ACTOR)
            .await
            .map(|n| format!("discarded {n} dead letters")),
    };
    match acted {
        Ok(done) => {
            println!("{done}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (DeadLetterError::Bus(_) | DeadLetterError::Store(_))) => Err(e.into()),
        Err(e) => {
            eprintln!("nothing done in {topic}: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
