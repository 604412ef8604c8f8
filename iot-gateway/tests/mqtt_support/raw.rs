//! Hand-built MQTT 3.1.1 packets, for tests that must send what no client library would.

use super::Device;

/// MQTT's variable-length "remaining length".
pub fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

pub fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

pub fn connect_with(name: &[u8], level: u8, device: &Device) -> Vec<u8> {
    connect_full(name, level, 30, device)
}

pub fn connect_keep_alive(keep_alive: u16, device: &Device) -> Vec<u8> {
    connect_full(b"MQTT", 4, keep_alive, device)
}

pub fn connect_full(name: &[u8], level: u8, keep_alive: u16, device: &Device) -> Vec<u8> {
    let mut body = Vec::new();
    string(name, &mut body);
    body.push(level);
    body.push(0b1100_0010); // username, password, clean session
    body.extend_from_slice(&keep_alive.to_be_bytes());
    string(device.id.as_str().as_bytes(), &mut body);
    string(device.username().as_bytes(), &mut body);
    string(device.token().as_bytes(), &mut body);
    packet(0x10, &body)
}

pub fn connect(device: &Device) -> Vec<u8> {
    connect_with(b"MQTT", 4, device)
}

pub fn publish(topic: &[u8], qos: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic, &mut body);
    if qos > 0 {
        body.extend_from_slice(&1u16.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}
