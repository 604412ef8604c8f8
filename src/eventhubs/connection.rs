//! One client connection: its sessions, and on each session the links clients attach.
//!
//! | link (client's role) | node | served by |
//! | --- | --- | --- |
//! | receiver | `{entity}/ConsumerGroups/{g}/Partitions/{n}` | [`partition::stream`] |
//! | sender / receiver | `$cbs`, `$management` | requests answered on the receiver link of the same node |
//!
//! A link to anything else, to a partition or consumer group that does not exist, or to a
//! partition before the connection is authorized, is attached and at once closed with an AMQP
//! error (`amqp:not-found`, `amqp:unauthorized-access`, `amqp:not-allowed`), as the AMQP spec
//! has a refused link answered. A protocol error ends only this connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fe2o3_amqp::acceptor::ListenerSessionHandle;
use fe2o3_amqp::acceptor::{LinkAcceptor, LinkEndpoint, ListenerConnectionHandle, SessionAcceptor};
use fe2o3_amqp::link::{Receiver, Sender};
use fe2o3_amqp::types::definitions::Fields;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErr, Role};
use fe2o3_amqp::types::messaging::{Body, TargetArchetype};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::types::primitives::{Symbol, Value};
use iot_core::PartitionId;
use tokio::sync::{mpsc, watch};

use super::address::{self, Node};
use super::claims::{Claims, unix_now};
use super::management::{self, Request};
use super::{Shared, partition, position};

/// The reply links of one session, by address: where answers to `$cbs` and `$management`
/// requests go.
type Replies = Arc<Mutex<HashMap<String, mpsc::Sender<Request>>>>;

/// Links a client may have open on one session at once.
const MAX_LINKS_PER_SESSION: u32 = 1024;

/// The `properties` every performative of this endpoint carries (`open`, `begin`, `attach`).
///
/// Why: AMQP lets a peer leave trailing empty fields out of a performative, and fe2o3-amqp does;
/// but `azure-eventhub`'s own AMQP stack (pyamqp) reads the last field of `open`, `begin` and
/// `attach` by index and fails on a shorter list. Setting the last field makes every field be
/// sent.
pub(crate) fn fields() -> Fields {
    let mut f = Fields::new();
    f.insert(Symbol::from("product"), Value::String("iot-sdk".to_owned()));
    f
}

/// Serves `connection` until the client closes it or the endpoint stops.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    claims: Arc<Claims>,
    mut connection: ListenerConnectionHandle,
    stop: watch::Receiver<bool>,
) {
    // An explicit `handle-max`: left at its default, it is not sent, and pyamqp then compares
    // its handle count with nothing when it opens a second link.
    let acceptor = SessionAcceptor::builder()
        .handle_max(MAX_LINKS_PER_SESSION)
        .properties(fields())
        .build();
    while let Some(incoming) = connection.next_incoming_session().await {
        match acceptor
            .accept_incoming_session(incoming, &mut connection)
            .await
        {
            Ok(session) => {
                tokio::spawn(serve_session(
                    shared.clone(),
                    claims.clone(),
                    session,
                    stop.clone(),
                ));
            }
            Err(e) => {
                tracing::debug!(error = %e, "refused a session");
                break;
            }
        }
    }
    if let Err(e) = connection.close().await {
        tracing::debug!(error = %e, "connection ended");
    }
}

fn source_address(attach: &Attach) -> Option<String> {
    attach
        .source
        .as_ref()
        .and_then(|s| s.address.as_ref())
        .map(|a| a.to_string())
}

fn target_address(attach: &Attach) -> Option<String> {
    match attach.target.as_deref() {
        Some(TargetArchetype::Target(t)) => t.address.as_ref().map(|a| a.to_string()),
        _ => None,
    }
}

/// The selector expression of the source's filter, if any.
fn selector(attach: &Attach) -> Option<String> {
    let filters = attach.source.as_ref()?.filter.as_ref()?;
    filters.iter().find_map(|(_, value)| match value {
        Value::Described(d) => {
            let named = match &d.descriptor {
                serde_amqp::descriptor::Descriptor::Name(n) => {
                    n.as_str() == position::SELECTOR_FILTER
                }
                serde_amqp::descriptor::Descriptor::Code(c) => *c == position::SELECTOR_FILTER_CODE,
            };
            match (&d.value, named) {
                (Value::String(s), true) => Some(s.clone()),
                _ => None,
            }
        }
        _ => None,
    })
}

async fn serve_session(
    shared: Arc<Shared>,
    claims: Arc<Claims>,
    mut session: ListenerSessionHandle,
    stop: watch::Receiver<bool>,
) {
    let links = LinkAcceptor::builder().properties(fields()).build();
    let replies: Replies = Arc::default();
    while let Some(attach) = session.next_incoming_attach().await {
        // The client's role: a receiver reads from the node named by its source.
        let client_receives = attach.role == Role::Receiver;
        let node_address = if client_receives {
            source_address(&attach)
        } else {
            target_address(&attach)
        };
        let reply_address = client_receives.then(|| target_address(&attach)).flatten();
        let start = selector(&attach);
        let node = node_address.as_deref().and_then(address::parse);
        let link = match links.accept_incoming_attach(attach, &mut session).await {
            Ok(link) => link,
            Err(e) => {
                tracing::debug!(error = %e, "refused a link");
                continue;
            }
        };
        let (shared, claims, replies, stop) = (
            shared.clone(),
            claims.clone(),
            replies.clone(),
            stop.clone(),
        );
        match (node, link) {
            (
                Some(Node::Partition {
                    entity,
                    group,
                    partition,
                }),
                LinkEndpoint::Sender(sender),
            ) => {
                tokio::spawn(open_partition(
                    shared, claims, sender, entity, group, partition, start, stop,
                ));
            }
            (Some(node @ (Node::Cbs | Node::Management)), LinkEndpoint::Sender(sender)) => {
                // A reply link: answers go to its source and to its target (the client's
                // `reply-to`, when it sets one).
                let (tx, rx) = mpsc::channel(16);
                let mut keys = vec![node_key(&node)];
                keys.extend(reply_address);
                {
                    let mut map = replies.lock().unwrap_or_else(|e| e.into_inner());
                    for key in &keys {
                        map.insert(key.clone(), tx.clone());
                    }
                }
                tokio::spawn(async move {
                    serve_replies(sender, rx, stop).await;
                    // Detached (or stopped): its addresses go, unless a newer link took them.
                    prune(&replies, &keys, &tx);
                });
            }
            (Some(node @ (Node::Cbs | Node::Management)), LinkEndpoint::Receiver(receiver)) => {
                tokio::spawn(serve_requests(
                    shared, claims, receiver, node, replies, stop,
                ));
            }
            (_, LinkEndpoint::Sender(sender)) => {
                partition::close(sender, AmqpError::NotFound, "no such node").await;
            }
            (_, LinkEndpoint::Receiver(receiver)) => {
                let error = AmqpErr::new(
                    AmqpError::NotAllowed,
                    Some("this endpoint takes no messages there".to_owned()),
                    None,
                );
                let _ = receiver.close_with_error(error).await;
            }
        }
    }
}

fn node_key(node: &Node) -> String {
    match node {
        Node::Cbs => "$cbs".to_owned(),
        _ => "$management".to_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn open_partition(
    shared: Arc<Shared>,
    claims: Arc<Claims>,
    sender: Sender,
    entity: String,
    group: String,
    partition: String,
    start: Option<String>,
    stop: watch::Receiver<bool>,
) {
    if !entity.eq_ignore_ascii_case(&shared.config.entity) {
        return partition::close(sender, AmqpError::NotFound, "no such event hub").await;
    }
    if !shared
        .config
        .consumer_groups
        .iter()
        .any(|g| g.eq_ignore_ascii_case(&group))
    {
        return partition::close(sender, AmqpError::NotFound, "no such consumer group").await;
    }
    let Some(id) = partition
        .parse::<u32>()
        .ok()
        .filter(|p| *p < shared.log.partition_count())
    else {
        return partition::close(sender, AmqpError::NotFound, "no such partition").await;
    };
    if claims.valid_until(unix_now()).is_none() {
        return partition::close(
            sender,
            AmqpError::UnauthorizedAccess,
            "put a token on $cbs first",
        )
        .await;
    }
    let start = match start.as_deref().map(position::parse) {
        None => position::Start::Earliest,
        Some(Some(start)) => start,
        Some(None) => {
            return partition::close(sender, AmqpError::InvalidField, "unsupported filter").await;
        }
    };
    let from = match position::resolve(shared.log.as_ref(), PartitionId(id), start).await {
        Ok(from) => from,
        Err(e) => {
            tracing::warn!(error = %e, "resolving a starting position");
            return partition::close(sender, AmqpError::InternalError, "the log failed").await;
        }
    };
    tracing::debug!(partition = id, group, from = from.0, "receive link opened");
    partition::stream(shared, claims, sender, PartitionId(id), from, stop).await;
}

/// Removes `keys` from `replies` where they still lead to `tx`'s link.
fn prune(replies: &Replies, keys: &[String], tx: &mpsc::Sender<Request>) {
    let mut map = replies.lock().unwrap_or_else(|e| e.into_inner());
    for key in keys {
        if map.get(key).is_some_and(|t| t.same_channel(tx)) {
            map.remove(key);
        }
    }
}

async fn serve_replies(
    mut sender: Sender,
    mut rx: mpsc::Receiver<Request>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { break };
                // Batchable, so that the transfer carries all its fields (see `fields`).
                let sent = match sender.send_batchable(message).await {
                    Ok(settled) => settled.await.map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "reply link ended");
                    return;
                }
            }
            _ = sender.on_detach() => return,
            _ = stop.changed() => break,
        }
    }
    let _ = sender.close().await;
}

async fn serve_requests(
    shared: Arc<Shared>,
    claims: Arc<Claims>,
    mut receiver: Receiver,
    node: Node,
    replies: Replies,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let delivery = tokio::select! {
            d = receiver.recv::<Body<Value>>() => d,
            _ = stop.changed() => break,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "request link ended");
                return;
            }
        };
        if let Err(e) = receiver.accept(&delivery).await {
            tracing::debug!(error = %e, "settling a request");
            return;
        }
        let request = delivery.message();
        let answer = match node {
            Node::Cbs => management::cbs(&shared, &claims, request),
            _ => management::management(&shared, &claims, request).await,
        };
        let reply_to = request
            .properties
            .as_ref()
            .and_then(|p| p.reply_to.as_ref())
            .map(|a| a.to_string());
        let tx = {
            let map = replies.lock().unwrap_or_else(|e| e.into_inner());
            reply_to
                .and_then(|r| map.get(&r).cloned())
                .or_else(|| map.get(&node_key(&node)).cloned())
        };
        match tx {
            Some(tx) => {
                if tx.send(answer).await.is_err() {
                    tracing::debug!("reply link gone");
                }
            }
            None => tracing::debug!("a request without a reply link"),
        }
    }
    let _ = receiver.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_reply_link_leaves_the_map_unless_a_newer_one_took_its_address() {
        let replies: Replies = Arc::default();
        let (old, _old_rx) = mpsc::channel(1);
        let (new, _new_rx) = mpsc::channel(1);
        {
            let mut map = replies.lock().expect("lock");
            map.insert("$cbs".into(), old.clone());
            map.insert("cbs-reply-1".into(), old.clone());
        }
        // A newer link on `$cbs` replaces the old one there.
        replies
            .lock()
            .expect("lock")
            .insert("$cbs".into(), new.clone());
        prune(&replies, &["$cbs".into(), "cbs-reply-1".into()], &old);
        let map = replies.lock().expect("lock");
        assert_eq!(map.len(), 1);
        assert!(map.get("$cbs").is_some_and(|t| t.same_channel(&new)));
    }
}
