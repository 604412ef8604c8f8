//! The node addresses Event Hubs clients attach to.
//!
//! A receive link's source is `[amqps://host[:port]/]{entity}/ConsumerGroups/{group}/Partitions/{n}`
//! (the segment names in any ASCII case); `$cbs` and `$management` are the two request/response
//! nodes. Anything else is not a node of this endpoint.

/// A node of the endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// Claims-based security: `put-token`.
    Cbs,
    /// Entity and partition queries.
    Management,
    /// A partition of the entity, read as a consumer group.
    Partition {
        entity: String,
        group: String,
        partition: String,
    },
}

/// Which node `address` names, or `None`.
pub(crate) fn parse(address: &str) -> Option<Node> {
    // Absolute addresses carry the scheme and host of the client's connection string.
    let path = match address.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, p)| p),
        None => address,
    };
    let path = path.trim_matches('/');
    if path.eq_ignore_ascii_case("$cbs") {
        return Some(Node::Cbs);
    }
    if path.eq_ignore_ascii_case("$management") {
        return Some(Node::Management);
    }
    let mut parts = path.split('/');
    let entity = parts.next()?;
    if entity.is_empty() {
        return None;
    }
    if !parts.next()?.eq_ignore_ascii_case("consumergroups") {
        return None;
    }
    let group = parts.next()?;
    if !parts.next()?.eq_ignore_ascii_case("partitions") {
        return None;
    }
    let partition = parts.next()?;
    if group.is_empty() || partition.is_empty() || parts.next().is_some() {
        return None;
    }
    Some(Node::Partition {
        entity: entity.to_owned(),
        group: group.to_owned(),
        partition: partition.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_nodes_clients_use() {
        assert_eq!(parse("$cbs"), Some(Node::Cbs));
        assert_eq!(parse("$management"), Some(Node::Management));
        assert_eq!(
            parse("amqps://hub.local/hub/ConsumerGroups/$Default/Partitions/3"),
            Some(Node::Partition {
                entity: "hub".into(),
                group: "$Default".into(),
                partition: "3".into()
            })
        );
        assert!(parse("hub/consumergroups/$default/partitions/0").is_some());
        assert_eq!(parse("hub/Partitions/0"), None);
        assert_eq!(parse("hub/ConsumerGroups/g/Partitions/0/x"), None);
        assert_eq!(parse(""), None);
    }
}
