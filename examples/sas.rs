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
//! the exit status is 0 when valid, 1 when not, 2 for a usage error.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use iot_identity::{SasVerifier, SymmetricKey, sas};

const USAGE: &str = "usage:
  sas generate --resource R --key K --expiry E [--policy P]
  sas verify --resource R --key K --token T [--policy P] [--skew SECONDS]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    let (command, rest) = args.split_first().ok_or("missing command")?;
    let allowed: &[&str] = match command.as_str() {
        "generate" => &["--resource", "--key", "--expiry", "--policy"],
        "verify" => &["--resource", "--key", "--token", "--policy", "--skew"],
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    let options = parse_options(rest, allowed)?;
    let get = |name: &str| options.get(name).map(String::as_str);
    let need = |name: &str| get(name).ok_or_else(|| format!("missing {name}"));
    let resource = need("--resource")?;
    let key = SymmetricKey::from_base64(need("--key")?).map_err(|e| e.to_string())?;
    let policy = get("--policy");
    match command.as_str() {
        "generate" => {
            let expiry = parse_expiry(need("--expiry")?)?;
            let token = sas::generate(resource, &key, expiry, policy).map_err(|e| e.to_string())?;
            println!("{}", token.as_str());
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            let mut verifier = SasVerifier::default();
            if let Some(skew) = get("--skew") {
                let secs: u64 = skew
                    .parse()
                    .map_err(|_| format!("--skew {skew:?} is not a number of seconds"))?;
                verifier.clock_skew = Duration::from_secs(secs);
            }
            match verifier.verify(
                need("--token")?,
                resource,
                &key,
                None,
                policy,
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

fn parse_options(args: &[String], allowed: &[&str]) -> Result<HashMap<String, String>, String> {
    let mut options = HashMap::new();
    let mut it = args.iter();
    while let Some(name) = it.next() {
        if !allowed.contains(&name.as_str()) {
            return Err(format!("unknown option {name:?}"));
        }
        let value = it.next().ok_or_else(|| format!("{name} needs a value"))?;
        if options.insert(name.clone(), value.clone()).is_some() {
            return Err(format!("{name} given twice"));
        }
    }
    Ok(options)
}

fn parse_expiry(text: &str) -> Result<u64, String> {
    let bad = || format!("--expiry {text:?} is not Unix seconds or +SECONDS");
    match text.strip_prefix('+') {
        Some(relative) => {
            let secs: u64 = relative.parse().map_err(|_| bad())?;
            Ok(sas::unix_now().saturating_add(secs))
        }
        None => text.parse().map_err(|_| bad()),
    }
}
