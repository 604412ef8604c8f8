//! The start of a connection: the SASL layer (its protocol header, `sasl-mechanisms`,
//! `sasl-init`, `sasl-outcome`), then the AMQP protocol header. The endpoint requires SASL:
//! a client that starts with the AMQP header gets the SASL header back and is closed, as the
//! spec has a peer answer a protocol it does not serve.

use fe2o3_amqp::acceptor::sasl_acceptor::{SaslAcceptor, SaslServerFrame};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslMechanisms, SaslOutcome};
use iot_gateway::adapter::SASL_FRAME;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::reader::FrameReader;
use super::{EngineError, write_body};
use crate::eventhubs::sasl::Sasl;

const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";

/// Runs the SASL exchange and the AMQP header exchange; `Ok` once the client may send `open`.
pub(crate) async fn negotiate<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    sasl: &mut Sasl,
) -> Result<(), EngineError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let header = reader.protocol_header().await?;
    if header != SASL_HEADER {
        // The AMQP header without SASL, another version or no AMQP at all: say what this
        // endpoint speaks, and close.
        writer.write_all(&SASL_HEADER).await?;
        writer.flush().await?;
        return Err(EngineError::Frame(
            "the client did not start with SASL".into(),
        ));
    }
    let mut out = SASL_HEADER.to_vec();
    let mechanisms = SaslMechanisms {
        sasl_server_mechanisms: sasl.mechanisms(),
    };
    write_body(&mut out, SASL_FRAME, 0, &mechanisms)?;
    writer.write_all(&out).await?;
    writer.flush().await?;

    let frame = reader.frame().await?;
    if frame.frame_type != SASL_FRAME {
        return Err(EngineError::Frame("expected sasl-init".into()));
    }
    let (value, _) = frame.split_body()?;
    let init: SaslInit = serde_amqp::from_slice(&value)
        .map_err(|e| EngineError::Frame(format!("not a sasl-init: {e}")))?;
    let outcome = match sasl.on_init(init) {
        SaslServerFrame::Outcome(outcome) => outcome,
        // Neither mechanism has a challenge.
        SaslServerFrame::Challenge(_) => SaslOutcome {
            code: SaslCode::Auth,
            additional_data: None,
        },
    };
    let accepted = matches!(outcome.code, SaslCode::Ok);
    let mut out = Vec::new();
    write_body(&mut out, SASL_FRAME, 0, &outcome)?;
    writer.write_all(&out).await?;
    writer.flush().await?;
    if !accepted {
        return Err(EngineError::Refused("SASL authentication failed"));
    }

    let header = reader.protocol_header().await?;
    if header != AMQP_HEADER {
        writer.write_all(&AMQP_HEADER).await?;
        writer.flush().await?;
        return Err(EngineError::Frame(
            "expected the AMQP header after SASL".into(),
        ));
    }
    writer.write_all(&AMQP_HEADER).await?;
    Ok(())
}
