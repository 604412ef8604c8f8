//! Which node a link attaches to, and whether the connection's claims allow it.
//!
//! | address | client role | needs |
//! | --- | --- | --- |
//! | `$cbs` | sender (requests) / receiver (replies) | nothing |
//! | `/devices/{id}/messages/events` | sender | a device grant for `{id}` |
//! | `/devices/{id}/messages/devicebound` | receiver | a device grant for `{id}` |
//! | `/devices/{id}/twin` | sender (requests) / receiver (answers, desired patches) | a device grant for `{id}` |
//! | `/devices/{id}/methods/devicebound` | receiver (requests) / sender (answers) | a device grant for `{id}` |
//! | `/messages/devicebound` | sender | a service grant with `ServiceConnect` |
//! | `/messages/serviceBound/feedback` | receiver | a service grant with `ServiceConnect` |
//!
//! A link to another device's address than the connection's tokens cover, or one the claims
//! do not (yet) allow, is attached and at once closed with `amqp:unauthorized-access`, as IoT
//! Hub does; an unknown address with `amqp:not-found`.

use std::sync::Arc;

use fe2o3_amqp::acceptor::{LinkAcceptor, LinkEndpoint, ListenerSessionHandle};
use fe2o3_amqp::types::definitions::{self, AmqpError, Role};
use fe2o3_amqp::types::messaging::TargetArchetype;
use fe2o3_amqp::types::performatives::Attach;
use iot_core::DeviceId;

use super::conn::{Conn, address_path, amqp_error};
use super::{c2d, cbs, methods, service, telemetry, twin};
use crate::adapter::Address;
use crate::http::Rights;

/// The link acceptor (no dynamic nodes).
pub(super) type Links = LinkAcceptor<
    fn(fe2o3_amqp::types::messaging::Source) -> Option<fe2o3_amqp::types::messaging::Source>,
    fn(fe2o3_amqp::types::messaging::Target) -> Option<fe2o3_amqp::types::messaging::Target>,
>;

/// What a link attaches to.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    CbsRequests,
    CbsReplies,
    Telemetry(DeviceId),
    DeviceBound(DeviceId),
    TwinRequests(DeviceId),
    TwinResponses(DeviceId),
    MethodRequests(DeviceId),
    MethodResponses(DeviceId),
    ServiceDeviceBound,
    Feedback,
}

/// The node of an attach, by the address of the far end: the target when the client sends,
/// the source when it receives.
fn node(attach: &Attach) -> Result<Node, definitions::Error> {
    let address = match attach.role {
        Role::Sender => match attach.target.as_deref() {
            Some(TargetArchetype::Target(t)) => t.address.clone(),
            _ => None,
        },
        Role::Receiver => attach.source.as_ref().and_then(|s| s.address.clone()),
    };
    let Some(address) = address else {
        return Err(amqp_error(
            AmqpError::InvalidField,
            "the link has no address",
        ));
    };
    let path = address_path(&address);
    let sends = attach.role == Role::Sender;
    let lower = path.to_ascii_lowercase();
    let not_found = || amqp_error(AmqpError::NotFound, "no such node");
    match (lower.as_str(), sends) {
        ("$cbs", true) => return Ok(Node::CbsRequests),
        ("$cbs", false) => return Ok(Node::CbsReplies),
        ("messages/devicebound", true) => return Ok(Node::ServiceDeviceBound),
        ("messages/servicebound/feedback", false) => return Ok(Node::Feedback),
        _ => {}
    }
    // Twin and method nodes (no `Address` of their own: only this endpoint serves them).
    let segments: Vec<&str> = path.split('/').collect();
    let device_of = |id: &str| DeviceId::new(id).map_err(|_| not_found());
    match segments.as_slice() {
        [devices, id, twin]
            if devices.eq_ignore_ascii_case("devices") && twin.eq_ignore_ascii_case("twin") =>
        {
            let device = device_of(id)?;
            return Ok(if sends {
                Node::TwinRequests(device)
            } else {
                Node::TwinResponses(device)
            });
        }
        [devices, id, methods, bound]
            if devices.eq_ignore_ascii_case("devices")
                && methods.eq_ignore_ascii_case("methods")
                && bound.eq_ignore_ascii_case("devicebound") =>
        {
            let device = device_of(id)?;
            // The device sends answers and receives requests.
            return Ok(if sends {
                Node::MethodResponses(device)
            } else {
                Node::MethodRequests(device)
            });
        }
        _ => {}
    }
    match (Address::parse(path.split('/')), sends) {
        (Ok(Address::Telemetry { device }), true) => Ok(Node::Telemetry(device)),
        (Ok(Address::DeviceBound { device }), false) => Ok(Node::DeviceBound(device)),
        _ => Err(not_found()),
    }
}

/// Accepts the link `attach` asks for and starts serving it, or refuses it.
pub(super) async fn attach(
    conn: &Arc<Conn>,
    acceptor: &Links,
    session: &mut ListenerSessionHandle,
    attach: Attach,
) {
    let node = node(&attach);
    let link = match acceptor.accept_incoming_attach(attach, session).await {
        Ok(link) => link,
        Err(e) => {
            tracing::debug!(error = %e, "AMQP attach failed");
            return;
        }
    };
    let conn = conn.clone();
    let unauthorized = || amqp_error(AmqpError::UnauthorizedAccess, "unauthorized");
    // The permit travels with the link's task and is returned when the link ends.
    let Ok(permit) = conn.links.clone().try_acquire_owned() else {
        let error = amqp_error(
            AmqpError::ResourceLimitExceeded,
            "too many links on this connection",
        );
        return refuse(error, link).await;
    };
    let refusal = match (node, link) {
        (Err(error), link) => Some((error, link)),
        (Ok(Node::CbsRequests), LinkEndpoint::Receiver(r)) => {
            spawn_held(permit, cbs::requests(conn, r));
            None
        }
        (Ok(Node::CbsReplies), LinkEndpoint::Sender(s)) => {
            spawn_held(permit, cbs::replies(conn, s));
            None
        }
        (Ok(Node::Telemetry(device)), LinkEndpoint::Receiver(r)) => {
            match conn.claims.device(&device) {
                Some(grant) => {
                    spawn_held(permit, telemetry::serve(conn, r, grant));
                    None
                }
                None => Some((unauthorized(), LinkEndpoint::Receiver(r))),
            }
        }
        (Ok(Node::DeviceBound(device)), LinkEndpoint::Sender(s)) => match conn.router(&device) {
            Some(router) => {
                spawn_held(permit, c2d::serve(conn, s, router));
                None
            }
            None => Some((unauthorized(), LinkEndpoint::Sender(s))),
        },
        (Ok(Node::TwinRequests(device)), LinkEndpoint::Receiver(r)) => match conn.router(&device) {
            Some(router) => {
                spawn_held(permit, twin::requests(conn, r, router));
                None
            }
            None => Some((unauthorized(), LinkEndpoint::Receiver(r))),
        },
        (Ok(Node::TwinResponses(device)), LinkEndpoint::Sender(s)) => match conn.router(&device) {
            Some(router) => {
                spawn_held(permit, twin::responses(conn, s, router));
                None
            }
            None => Some((unauthorized(), LinkEndpoint::Sender(s))),
        },
        (Ok(Node::MethodResponses(device)), LinkEndpoint::Receiver(r)) => {
            match conn.router(&device) {
                Some(router) => {
                    spawn_held(permit, methods::responses(conn, r, router));
                    None
                }
                None => Some((unauthorized(), LinkEndpoint::Receiver(r))),
            }
        }
        (Ok(Node::MethodRequests(device)), LinkEndpoint::Sender(s)) => match conn.router(&device) {
            Some(router) => {
                spawn_held(permit, methods::requests(conn, s, router));
                None
            }
            None => Some((unauthorized(), LinkEndpoint::Sender(s))),
        },
        (Ok(Node::ServiceDeviceBound), LinkEndpoint::Receiver(r)) => {
            match conn.claims.service(Rights::SERVICE_CONNECT) {
                Some(grant) => {
                    spawn_held(permit, service::devicebound(conn, r, grant));
                    None
                }
                None => Some((unauthorized(), LinkEndpoint::Receiver(r))),
            }
        }
        (Ok(Node::Feedback), LinkEndpoint::Sender(s)) => {
            match conn.claims.service(Rights::SERVICE_CONNECT) {
                Some(grant) => {
                    spawn_held(permit, service::feedback(conn, s, grant));
                    None
                }
                None => Some((unauthorized(), LinkEndpoint::Sender(s))),
            }
        }
        // The role and the node disagree (cannot happen: the node was chosen by role).
        (Ok(_), link) => Some((amqp_error(AmqpError::NotAllowed, "wrong link role"), link)),
    };
    if let Some((error, link)) = refusal {
        refuse(error, link).await;
    }
}

/// Runs a link's task holding its permit, so that the link counts until the task ends.
fn spawn_held<F>(permit: tokio::sync::OwnedSemaphorePermit, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let _permit = permit;
        task.await;
    });
}

/// Closes `link`, just attached, with `error`.
async fn refuse(error: definitions::Error, link: LinkEndpoint) {
    {
        tracing::debug!(condition = ?error.condition, "AMQP link refused");
        let closed = match link {
            LinkEndpoint::Sender(s) => s.close_with_error(error).await.err().map(|e| e.to_string()),
            LinkEndpoint::Receiver(r) => {
                r.close_with_error(error).await.err().map(|e| e.to_string())
            }
        };
        if let Some(e) = closed {
            tracing::debug!(error = %e, "closing a refused link failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::{Source, Target};

    fn attach(role: Role, address: &str) -> Attach {
        let mut attach = Attach {
            name: "l".into(),
            handle: 0.into(),
            role: role.clone(),
            snd_settle_mode: Default::default(),
            rcv_settle_mode: Default::default(),
            source: None,
            target: None,
            unsettled: None,
            incomplete_unsettled: false,
            initial_delivery_count: None,
            max_message_size: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        match role {
            Role::Sender => {
                attach.target = Some(Box::new(
                    Target::builder()
                        .address(address.to_string())
                        .build()
                        .into(),
                ))
            }
            Role::Receiver => {
                attach.source = Some(Box::new(
                    Source::builder().address(address.to_string()).build(),
                ))
            }
        }
        attach
    }

    #[test]
    fn nodes_by_address_and_role() {
        let d1 = DeviceId::new("d1").expect("id");
        assert_eq!(
            node(&attach(Role::Sender, "/devices/d1/messages/events")).expect("node"),
            Node::Telemetry(d1.clone())
        );
        assert_eq!(
            node(&attach(
                Role::Receiver,
                "amqps://hub/devices/d1/messages/deviceBound"
            ))
            .expect("node"),
            Node::DeviceBound(d1)
        );
        assert_eq!(
            node(&attach(Role::Sender, "$cbs")).expect("node"),
            Node::CbsRequests
        );
        assert_eq!(
            node(&attach(Role::Receiver, "/messages/serviceBound/feedback")).expect("node"),
            Node::Feedback
        );
        // Receiving from the telemetry address, or sending to a C2D one, is no node.
        assert!(node(&attach(Role::Receiver, "/devices/d1/messages/events")).is_err());
        assert!(node(&attach(Role::Sender, "/devices/d1/messages/devicebound")).is_err());
        assert!(node(&attach(Role::Sender, "/elsewhere")).is_err());
        let d2 = DeviceId::new("d2").expect("id");
        assert_eq!(
            node(&attach(Role::Sender, "/devices/d2/twin")).expect("node"),
            Node::TwinRequests(d2.clone())
        );
        assert_eq!(
            node(&attach(Role::Receiver, "amqps://hub/devices/d2/twin")).expect("node"),
            Node::TwinResponses(d2.clone())
        );
        assert_eq!(
            node(&attach(Role::Receiver, "/devices/d2/methods/devicebound")).expect("node"),
            Node::MethodRequests(d2.clone())
        );
        assert_eq!(
            node(&attach(Role::Sender, "/devices/d2/methods/deviceBound")).expect("node"),
            Node::MethodResponses(d2)
        );
    }
}
