//! Generate or verify an Azure IoT Hub–compatible SAS token by hand.
//!
//! ```text
//! cargo run --example sas -- generate --resource R --key K --expiry E [--policy P]
//! cargo run --example sas -- verify --resource R --key K --token T [--policy P] [--skew SECONDS]
//! ```
//!
//! `R` is the unencoded resource, e.g. `myhub.azure-devices.net/devices/dev-1`; `K` a base64 key
//! (32 to 64 bytes); `E` the expiry in Unix seconds, or `+N` for N seconds from now. `generate`
//! prints the token. `verify` checks it at the current time and prints `valid`, or the typed error
//! (`malformed`, `expired`, `wrong_scope`, `bad_signature`, `unknown_policy`) with its reason;
//! the exit status is 0 when valid, 1 when not, 2 for a usage error (clap's: unknown flags,
//! missing or malformed values, arguments that are not UTF-8).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use iot_identity::{SasVerifier, SymmetricKey, sas};

/// Generate or verify an Azure IoT Hub–compatible SAS token.
///
/// Exit status: 0 done (or the token is valid), 1 the token is not valid, 2 usage error.
// No Debug derives here: these hold the key and the token.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a token for the resource, signed with the key.
    Generate {
        #[command(flatten)]
        common: Common,
        /// Expiry: Unix seconds, or +SECONDS from now.
        #[arg(long, value_name = "E", value_parser = parse_expiry)]
        expiry: u64,
    },
    /// Check a token at the current time; print `valid` or the error kind and reason.
    Verify {
        #[command(flatten)]
        common: Common,
        /// The token to check.
        #[arg(long, value_name = "T")]
        token: String,
        /// Tolerated clock skew, in seconds (the verifier's default when absent).
        #[arg(long, value_name = "SECONDS")]
        skew: Option<u64>,
    },
}

#[derive(Args)]
struct Common {
    /// The unencoded resource, e.g. myhub.azure-devices.net/devices/dev-1.
    #[arg(long, value_name = "R")]
    resource: String,
    /// The base64 key (32 to 64 bytes).
    // Decoded in `run`, not by clap: clap's error for a refused value repeats the value.
    #[arg(long, value_name = "K")]
    key: String,
    /// The shared access policy name, for hub-level tokens.
    #[arg(long, value_name = "P")]
    policy: Option<String>,
}

fn main() -> ExitCode {
    // Usage errors (and --help) end here, with clap's message and exit status 2 (0 for help).
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Generate { common, expiry } => {
            let key = parse_key(&common.key)?;
            let token = sas::generate(&common.resource, &key, expiry, common.policy.as_deref())
                .map_err(|e| e.to_string())?;
            println!("{}", token.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            common,
            token,
            skew,
        } => {
            let key = parse_key(&common.key)?;
            let mut verifier = SasVerifier::default();
            if let Some(secs) = skew {
                verifier.clock_skew = Duration::from_secs(secs);
            }
            match verifier.verify(
                &token,
                &common.resource,
                &key,
                None,
                common.policy.as_deref(),
                sas::unix_now(),
            ) {
                Ok(_) => {
                    println!("valid");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("{}: {e}", e.kind());
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn parse_key(text: &str) -> Result<SymmetricKey, String> {
    // The error names the problem, never the key.
    SymmetricKey::from_base64(text).map_err(|e| format!("--key: {e}"))
}

fn parse_expiry(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not Unix seconds or +SECONDS");
    match text.strip_prefix('+') {
        Some(relative) => {
            let secs: u64 = relative.parse().map_err(|_| bad())?;
            Ok(sas::unix_now().saturating_add(secs))
        }
        None => text.parse().map_err(|_| bad()),
    }
}
