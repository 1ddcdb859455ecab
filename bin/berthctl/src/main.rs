//! berthctl: berth's admin CLI, over berthd's admin socket.

use anyhow::{anyhow, Result};
use berth_protocol::admin::admin_client::AdminClient;
use berth_protocol::admin::*;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "berthctl", version, about = "Administer a running berthd")]
struct Args {
    /// berthd's admin socket (admin.socket in config.toml).
    #[arg(
        long,
        short,
        env = "BERTH_ADMIN_SOCKET",
        default_value = "/run/berth/admin.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A table of every actor: status, messages, mailbox, restarts.
    Actors,
    /// One actor in detail.
    Actor {
        /// The actor: network, shim, image, sandbox or container.
        name: String,
    },
    /// Kill an actor (chaos): its supervisor restarts it and it rebuilds its
    /// state from the journal.
    KillActor {
        /// The actor: network, shim, image, sandbox or container.
        name: String,
        /// Panic inside one of its handlers instead of stopping it.
        #[arg(long)]
        panic: bool,
    },
    /// A round trip through an actor's mailbox.
    Ping {
        /// The actor: network, shim, image, sandbox or container.
        name: String,
    },
    /// The journal.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Images: import from a tarball (no registry needed), list.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// A table of every shim: container, pid, alive, socket.
    Shims,
    /// Compare the journal with the machine (shims, runtime state, mounts,
    /// namespaces, IPs, cgroups) and list what is leaked or missing. Exits
    /// 1 if anything is found.
    Fsck,
    /// Chaos: kill random actors on a schedule.
    Chaos {
        #[command(subcommand)]
        command: ChaosCommand,
    },
    /// What recovery found and repaired when berthd started.
    Recovery,
}

#[derive(Subcommand)]
enum ChaosCommand {
    /// Start (or replace) the schedule.
    Start {
        /// Time between kills, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval: u64,
        /// Actors to pick from, comma-separated; all if not given.
        #[arg(long, value_delimiter = ',')]
        actors: Vec<String>,
        /// Panic inside a handler instead of stopping the actor.
        #[arg(long)]
        panic: bool,
    },
    /// Stop the schedule; actors already killed have been restarted.
    Stop,
    /// Whether a schedule runs: its interval, actors, kills so far and the
    /// last actor killed.
    Status,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Load the images of an OCI image layout tarball or a `docker save`
    /// archive (plain, gzip- or zstd-compressed). berthd reads FILE itself,
    /// so it must be on berthd's host.
    Import {
        /// The archive (.tar, .tar.gz or .tar.zst).
        file: PathBuf,
    },
    /// A table of every image: ID, tags, size.
    Ls,
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Record counts per kind, size on disk, boots.
    Stats,
}

fn status_name(status: i32) -> &'static str {
    match ActorStatus::try_from(status) {
        Ok(ActorStatus::Running) => "running",
        Ok(ActorStatus::Restarting) => "restarting",
        Ok(ActorStatus::Stopped) => "stopped",
        _ => "unknown",
    }
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn actor_table(actors: &[ActorInfo]) -> String {
    let mut out = format!(
        "{:<10} {:<10} {:>8} {:>7} {:>7} {:>8} {:>8}  {}\n",
        "NAME", "STATUS", "HANDLED", "FAILED", "MAILBOX", "RESTARTS", "UPTIME", "LAST ERROR"
    );
    for a in actors {
        let status = if a.crash_loop {
            "crash-loop"
        } else {
            status_name(a.status)
        };
        out.push_str(&format!(
            "{:<10} {:<10} {:>8} {:>7} {:>7} {:>8} {:>8}  {}\n",
            a.name,
            status,
            a.handled,
            a.failed,
            a.mailbox,
            a.restarts,
            uptime(a.uptime_ms),
            a.last_error
        ));
    }
    out
}

fn when(unix_nanos: i64) -> String {
    if unix_nanos == 0 {
        return "never".into();
    }
    let ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64 - unix_nanos)
        .unwrap_or(0);
    format!("{} ago", uptime((ago / 1_000_000).max(0) as u64))
}

/// Bytes in decimal units, as docker and crictl show image sizes.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The short form of an image ID: its first 12 hex digits.
fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

fn tags(tags: &[String]) -> String {
    if tags.is_empty() {
        "<none>".into()
    } else {
        tags.join(",")
    }
}

fn image_table(images: &[ImageSummary]) -> String {
    let mut rows: Vec<(String, String, String)> = images
        .iter()
        .map(|i| {
            (
                short_id(&i.id).to_string(),
                tags(&i.repo_tags),
                human_size(i.size),
            )
        })
        .collect();
    rows.sort();
    let width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
    let mut out = format!("{:<12}  {:<width$}  {:>9}\n", "IMAGE ID", "TAGS", "SIZE");
    for (id, tags, size) in rows {
        out.push_str(&format!("{id:<12}  {tags:<width$}  {size:>9}\n"));
    }
    out
}

async fn client(socket: &std::path::Path) -> Result<AdminClient<Channel>> {
    let channel = berth_protocol::uds::connect(socket).await.map_err(|e| {
        let cause = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        anyhow!(
            "cannot reach berthd at {}: {cause} (is berthd running? see --socket)",
            socket.display()
        )
    })?;
    Ok(AdminClient::new(channel))
}

async fn run(args: Args) -> Result<String> {
    let mut admin = client(&args.socket).await?;
    let out = match args.command {
        Command::Actors => {
            let actors = admin.list_actors(ListActorsRequest {}).await?.into_inner();
            actor_table(&actors.actors)
        }
        Command::Actor { name } => {
            let a = admin
                .get_actor(GetActorRequest { name })
                .await?
                .into_inner();
            format!(
                "name:       {}\nstatus:     {}\nhandled:    {}\nfailed:     {}\nmailbox:    {}\nrestarts:   {}\nuptime:     {}\nlast error: {}\n",
                a.name,
                status_name(a.status),
                a.handled,
                a.failed,
                a.mailbox,
                a.restarts,
                uptime(a.uptime_ms),
                a.last_error
            )
        }
        Command::KillActor { name, panic } => {
            let mode = if panic {
                KillMode::Panic
            } else {
                KillMode::Stop
            };
            let req = KillActorRequest {
                name: name.clone(),
                mode: mode as i32,
            };
            match admin.kill_actor(req).await {
                Ok(r) => format!(
                    "killed {name} (restarts before: {}); its supervisor restarts it\n",
                    r.into_inner().restarts_before
                ),
                // The call in the panicking handler fails as a caller would see it.
                Err(s) if panic && s.code() == tonic::Code::Unavailable => {
                    format!(
                        "{name} panicked ({}); its supervisor restarts it\n",
                        s.message()
                    )
                }
                Err(s) => return Err(s.into()),
            }
        }
        Command::Ping { name } => {
            let start = std::time::Instant::now();
            let p = admin
                .ping_actor(PingActorRequest { name })
                .await?
                .into_inner();
            format!(
                "{}: records={} generation={} round trip {:?}\n",
                p.name,
                p.records,
                p.generation,
                start.elapsed()
            )
        }
        Command::Journal {
            command: JournalCommand::Stats,
        } => {
            let s = admin
                .journal_stats(JournalStatsRequest {})
                .await?
                .into_inner();
            let mut out = format!(
                "path:       {}\nsize:       {} bytes\nlast flush: {}\nwrites:     {} since berthd started\nrecords:\n",
                s.path,
                s.size_bytes,
                when(s.last_flush_unix_nanos),
                s.writes
            );
            for k in &s.kinds {
                out.push_str(&format!("  {:<10} {}\n", k.kind, k.count));
            }
            out.push_str(&format!("boots: {}\n", s.boots.len()));
            for b in &s.boots {
                out.push_str(&format!(
                    "  #{:<4} pid {:<8} started {:<10} {}\n",
                    b.seq,
                    b.pid,
                    when(b.started_unix_nanos),
                    if b.clean_shutdown {
                        "clean shutdown"
                    } else {
                        "running or crashed"
                    }
                ));
            }
            out
        }
        Command::Image {
            command: ImageCommand::Import { file },
        } => {
            // berthd resolves paths from its own working directory, not
            // ours: send it an absolute one.
            let path = std::path::absolute(&file)
                .map_err(|e| anyhow!("cannot resolve {}: {e}", file.display()))?;
            let imported = admin
                .import_image(ImportImageRequest {
                    path: path.to_string_lossy().into_owned(),
                })
                .await?
                .into_inner();
            let mut out = String::new();
            for i in &imported.images {
                out.push_str(&format!("imported {}  {}\n", i.id, tags(&i.repo_tags)));
            }
            out
        }
        Command::Image {
            command: ImageCommand::Ls,
        } => {
            let list = admin.list_images(ListImagesRequest {}).await?.into_inner();
            image_table(&list.images)
        }
        Command::Shims => {
            let list = admin.list_shims(ListShimsRequest {}).await?.into_inner();
            let mut out = format!(
                "{:<13} {:>8} {:<6} {:<7} {:<8} {}\n",
                "CONTAINER", "PID", "ALIVE", "EXITED", "RUNTIME", "ADDRESS"
            );
            for s in &list.shims {
                out.push_str(&format!(
                    "{:<13} {:>8} {:<6} {:<7} {:<8} {}\n",
                    short_id(&s.container_id),
                    s.pid,
                    if s.alive { "yes" } else { "no" },
                    if s.exited { "yes" } else { "no" },
                    s.runtime_handler,
                    s.address
                ));
            }
            out
        }
        Command::Fsck => {
            let r = admin.fsck(FsckRequest {}).await?.into_inner();
            let mut out = String::new();
            for f in &r.findings {
                out.push_str(&format!(
                    "{:<8} {:<8} {}  ({})\n",
                    f.problem, f.kind, f.object, f.detail
                ));
            }
            out.push_str(&format!(
                "checked {} objects: {} problems\n",
                r.checked,
                r.findings.len()
            ));
            if !r.findings.is_empty() {
                return Err(Found(out).into());
            }
            out
        }
        Command::Chaos { command } => {
            let s = match command {
                ChaosCommand::Start {
                    interval,
                    actors,
                    panic,
                } => {
                    let mode = if panic {
                        KillMode::Panic
                    } else {
                        KillMode::Stop
                    };
                    admin
                        .start_chaos(StartChaosRequest {
                            interval_ms: interval,
                            actors,
                            mode: mode as i32,
                        })
                        .await?
                }
                ChaosCommand::Stop => admin.stop_chaos(StopChaosRequest {}).await?,
                ChaosCommand::Status => admin.get_chaos(GetChaosRequest {}).await?,
            }
            .into_inner();
            if s.running {
                let actors = if s.actors.is_empty() {
                    "all actors".to_string()
                } else {
                    s.actors.join(",")
                };
                let last = if s.last_victim.is_empty() {
                    String::new()
                } else {
                    format!(", the last of {}", s.last_victim)
                };
                format!(
                    "chaos running: every {} ms among {actors}; {} kills{last}\n",
                    s.interval_ms, s.kills
                )
            } else {
                format!("chaos stopped; {} kills so far\n", s.kills)
            }
        }
        Command::Recovery => {
            let r = admin
                .get_recovery(GetRecoveryRequest {})
                .await?
                .into_inner();
            let mut out = format!(
                "recovery took {} ms; {} live shims reconnected; {} repairs\n",
                r.took_ms,
                r.live_shims,
                r.fixed.len()
            );
            for line in &r.fixed {
                out.push_str(&format!("  {line}\n"));
            }
            out
        }
    };
    Ok(out)
}

/// fsck's report when it found something: printed, and berthctl exits 1.
#[derive(Debug)]
struct Found(String);

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Found {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(out) => print!("{out}"),
        Err(e) => {
            if let Some(Found(report)) = e.downcast_ref::<Found>() {
                print!("{report}");
                std::process::exit(1);
            }
            let msg = match e.downcast_ref::<tonic::Status>() {
                Some(s) => format!("{:?}: {}", s.code(), s.message()),
                None => format!("{e:#}"),
            };
            eprintln!("berthctl: {msg}");
            std::process::exit(1);
        }
    }
}
