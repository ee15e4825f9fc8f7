//! `strata`: the command line.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use strata_server::config::{Config, Duration, DEFAULT_TOML};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a telemetry platform in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded: ingest log, storage and API in this process).
    Serve {
        /// TOML configuration file (see `strata config`); flags override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Listen address.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Raw-sample retention, e.g. 30d.
        #[arg(long)]
        retention: Option<Duration>,
        /// Also run a simulated fleet of 100 devices against this server.
        #[arg(long)]
        demo: bool,
    },
    /// Send a simulated device fleet's events to a running server.
    Simulate {
        /// Server base URL.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
        /// Number of sites.
        #[arg(long, default_value_t = 5)]
        sites: usize,
        /// Devices per site.
        #[arg(long, default_value_t = 20)]
        devices_per_site: usize,
        /// Time between a device's readings.
        #[arg(long, default_value = "5s")]
        interval: Duration,
        /// Stop after this long (default: run until interrupted).
        #[arg(long)]
        duration: Option<Duration>,
        /// Seed for the simulated faults.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Instead of running live, send this much history (ending now) as fast as the server
        /// takes it, then print the throughput (e.g. `--backfill 6h`).
        #[arg(long)]
        backfill: Option<Duration>,
        /// Concurrent connections for `--backfill`.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// Load history of any age into a running server's tiers (POST /api/v1/admin/backfill):
    /// files of Influx line protocol or Prometheus remote-write requests, gzip'd or not, sent
    /// as requests of whole series-hours.
    Backfill {
        /// Server base URL.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
        /// Tenant (X-Scope-OrgID); the default tenant when absent.
        #[arg(long)]
        tenant: Option<String>,
        /// `lp` (Influx line protocol) or `rw` (one remote-write request per file).
        #[arg(long, default_value = "lp")]
        format: String,
        /// Timestamp precision of line protocol: ns, us, ms or s.
        #[arg(long, default_value = "ns")]
        precision: String,
        /// About how many bytes of samples each request carries.
        #[arg(long, default_value_t = 16 << 20)]
        request_bytes: usize,
        /// Files to send.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the default configuration file, documented.
    Config,
    /// Prometheus rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Run PromQL test scripts (Prometheus's `load` / `eval` / `expect` format) against the
    /// engine; exits non-zero when a case fails.
    PromqlTest {
        /// Script files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Check rule files as `promtool check rules` does; exits non-zero when one has problems.
    Check {
        /// Rule files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run rule unit tests in `promtool test rules` format; exits non-zero when one fails.
    Test {
        /// Test files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `strata rules test`: each file's outcome, promtool's layout.
fn test_rule_files(files: &[PathBuf]) -> bool {
    let mut ok = true;
    for f in files {
        println!("Unit Testing:  {}", f.display());
        match strata_alert::unittest::run_file(f) {
            Ok(r) if r.failures.is_empty() => println!("  SUCCESS\n"),
            Ok(r) => {
                ok = false;
                println!("  FAILED:");
                for p in r.failures {
                    println!("    {p}");
                }
                println!();
            }
            Err(e) => {
                ok = false;
                println!("  FAILED:\n    {e}\n");
            }
        }
    }
    ok
}

/// `strata rules check`: each file's rule count or every problem in it, promtool's layout.
fn check_rule_files(files: &[PathBuf]) -> bool {
    let mut ok = true;
    for f in files {
        println!("Checking {}", f.display());
        let checked = std::fs::read_to_string(f)
            .map_err(|e| vec![format!("cannot read the file: {e}")])
            .and_then(|text| {
                strata_alert::parse_rule_file(&text)
                    .map_err(|errors| errors.iter().map(ToString::to_string).collect())
            });
        match checked {
            Ok(groups) => {
                let n: usize = groups.iter().map(|g| g.rules.len()).sum();
                println!("  SUCCESS: {n} rules found\n");
            }
            Err(problems) => {
                ok = false;
                println!("  FAILED:");
                for p in problems {
                    println!("{}: {p}", f.display());
                }
                println!();
            }
        }
    }
    ok
}

fn main() -> anyhow::Result<()> {
    strata_server::memory::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve {
            config,
            data_dir,
            listen,
            retention,
            demo,
        } => {
            let mut cfg = match config {
                Some(p) => Config::load(&p)?,
                None => Config::default(),
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if let Some(r) = retention {
                cfg.retention = r;
            }
            strata_server::serve(cfg, demo)
        }
        Command::Simulate {
            url,
            sites,
            devices_per_site,
            interval,
            duration,
            seed,
            backfill,
            connections,
        } => {
            let ms = |d: Duration| std::time::Duration::from_millis(d.0 as u64);
            let fleet = strata_server::simulate::FleetConfig {
                url: format!("{}/api/v1/events", url.trim_end_matches('/')),
                sites,
                devices_per_site,
                interval: ms(interval),
                duration: duration.map(ms),
                seed,
                progress: true,
            };
            if let Some(span) = backfill {
                let r = strata_server::simulate::backfill(&fleet, ms(span), connections, 1000)?;
                println!(
                    "backfill: {} events ({} samples) in {:.2} s: {:.0} events/s, {:.0} samples/s, {} failed requests",
                    r.events,
                    r.samples,
                    r.seconds,
                    r.events as f64 / r.seconds,
                    r.samples as f64 / r.seconds,
                    r.failed_requests
                );
                anyhow::ensure!(
                    r.failed_requests == 0,
                    "{} requests failed",
                    r.failed_requests
                );
                return Ok(());
            }
            let sent = strata_server::simulate::run(&fleet)?;
            eprintln!("sent {sent} events");
            Ok(())
        }
        Command::Backfill {
            url,
            tenant,
            format,
            precision,
            request_bytes,
            files,
        } => {
            let precision = match format.as_str() {
                "lp" => Some(
                    strata_ingest::influx::Precision::parse(&precision).ok_or_else(|| {
                        anyhow::anyhow!("--precision {precision:?}: expected ns, us, ms or s")
                    })?,
                ),
                "rw" => None,
                f => anyhow::bail!("--format {f:?}: expected lp or rw"),
            };
            let started = std::time::Instant::now();
            let t = strata_server::backfill::run(&strata_server::backfill::BackfillArgs {
                url,
                tenant,
                precision,
                request_bytes,
                files,
                progress: true,
            })?;
            let secs = started.elapsed().as_secs_f64();
            let n = t.fields.get("samples").copied().unwrap_or(0);
            let fields: Vec<String> = t.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "backfill: {} requests in {secs:.2} s ({:.0} samples/s): {}",
                t.requests,
                n as f64 / secs,
                fields.join(" ")
            );
            Ok(())
        }
        Command::Config => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Rules {
            command: RulesCommand::Check { files },
        } => {
            if !check_rule_files(&files) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Rules {
            command: RulesCommand::Test { files },
        } => {
            if !test_rule_files(&files) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::PromqlTest { files } => {
            let (mut passed, mut failed, mut skipped) = (0, 0, 0);
            for f in &files {
                let report = strata_promql::script::run_file(f)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
                print!("{report}");
                passed += report.passed;
                failed += report.failed.len();
                skipped += report.skipped.len();
            }
            println!(
                "total: {} files: {passed} passed, {failed} failed, {skipped} skipped",
                files.len()
            );
            if failed > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
