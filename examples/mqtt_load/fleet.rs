//! The gateway's fleet as the load generator logs in: devices `fleet-0` … with SAS tokens signed
//! by keys derived from the group key (`mqtt_gateway --fleet N` writes it to DIR/fleet.key), as a
//! symmetric-key group enrollment gives them.

use iot_identity::{SymmetricKey, sas};

use crate::{Args, Login};

/// The fleet's logins: `fleet-{i}` with a SAS token from its derived key, for `--host`.
pub(crate) fn fleet_logins(args: &Args) -> Result<Vec<Login>, Box<dyn std::error::Error>> {
    let key_file = args
        .fleet_key_file
        .as_ref()
        .ok_or("--fleet-key-file is needed to derive the fleet's keys")?;
    let group = SymmetricKey::from_base64(std::fs::read_to_string(key_file)?.trim())?;
    (0..args.devices)
        .map(|i| {
            let id = format!("fleet-{i}");
            let key = group.derive_for_device(&id);
            let token = sas::generate(
                &format!("{}/devices/{id}", args.host),
                &key,
                sas::unix_now() + 86_400,
                None,
            )?;
            let username = format!("{}/{id}/?api-version=2021-04-12", args.host);
            Ok((id, Some((username, token.as_str().to_owned()))))
        })
        .collect()
}
