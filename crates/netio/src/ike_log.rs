//! One log line per IKE message and per SA event of the [`esplab_node::Agent`].
//!
//! Key material only appears when the daemon runs with `--debug-keys`
//! (`log.debug_keys = true`): then every CHILD SA adds Wireshark `esp_sa` UAT lines and
//! every IKE SA an `ikev2_decryption_table` line.

use esplab_ike::IkeEvent;
use esplab_node::AgentEvent;

fn dir(response: bool) -> &'static str {
    if response {
        "response"
    } else {
        "request"
    }
}

fn sa(id: Option<esplab_ike::IkeSaId>) -> String {
    id.map(|i| format!("IKE SA {i} ")).unwrap_or_default()
}

/// The log lines for an IKE or SA event (datapath events are logged elsewhere).
pub fn lines(ev: &AgentEvent) -> Vec<String> {
    match ev {
        AgentEvent::Node(_) => Vec::new(),
        AgentEvent::Ike(e) => vec![ike_line(e)],
        AgentEvent::ChildInstalled {
            peer,
            ike_sa,
            inbound_spi,
            outbound_spi,
            suite,
            local_ts,
            remote_ts,
            remote,
            active,
            rekey_of,
            uat,
        } => {
            let mut v = vec![format!(
                "CHILD SA installed: peer {peer} IKE SA {ike_sa} in 0x{inbound_spi:08x} out 0x{outbound_spi:08x} {suite} {} === {} via udp {remote}{}{}",
                local_ts.join(","),
                remote_ts.join(","),
                rekey_of
                    .map(|o| format!(", replaces in 0x{o:08x}"))
                    .unwrap_or_default(),
                if *active { "" } else { ", outbound waits for the old pair's Delete" }
            )];
            v.extend(uat.iter().map(|l| format!("debug-keys esp_sa: {l}")));
            v
        }
        AgentEvent::ChildActivated {
            peer,
            inbound_spi,
            outbound_spi,
        } => vec![format!(
            "CHILD SA outbound active: peer {peer} in 0x{inbound_spi:08x} out 0x{outbound_spi:08x}"
        )],
        AgentEvent::ChildRemoved {
            peer,
            inbound_spi,
            outbound_spi,
            linger,
        } => vec![format!(
            "CHILD SA removed: peer {peer} out 0x{outbound_spi:08x} now, in 0x{inbound_spi:08x} after {:.1}s",
            linger.as_secs_f64()
        )],
        AgentEvent::InstallFailed {
            peer,
            inbound_spi,
            error,
        } => vec![format!(
            "CHILD SA install FAILED: peer {peer} in 0x{inbound_spi:08x}: {error}"
        )],
        AgentEvent::Recovery(r) => vec![esplab_node::recovery_log_line(r)],
        // The UAT line ends the log line, as for esp_sa, so it can be cut out as is (the
        // SPIs in it name the IKE SA).
        AgentEvent::IkeKeys { uat, .. } => {
            vec![format!("debug-keys ikev2_decryption_table: {uat}")]
        }
    }
}

fn ike_line(e: &IkeEvent) -> String {
    match e {
        IkeEvent::MessageSent {
            ike_sa,
            local,
            remote,
            exchange,
            message_id,
            response,
            retransmit,
            payloads,
        } => format!(
            "IKE {}sent {exchange} {} #{message_id} {local} -> {remote}{} [ {payloads} ]",
            sa(*ike_sa),
            dir(*response),
            if *retransmit { " (retransmit)" } else { "" }
        ),
        IkeEvent::MessageReceived {
            ike_sa,
            local,
            remote,
            exchange,
            message_id,
            response,
            payloads,
        } => format!(
            "IKE {}received {exchange} {} #{message_id} {remote} -> {local} [ {payloads} ]",
            sa(*ike_sa),
            dir(*response)
        ),
        IkeEvent::MessageDropped {
            local,
            remote,
            reason,
        } => format!(
            "IKE dropped datagram {remote} -> {local}: {} ({reason:?})",
            reason.as_str()
        ),
        IkeEvent::AuthSucceeded {
            ike_sa,
            peer,
            role,
            remote_id,
            remote,
            nat,
        } => format!(
            "IKE SA {ike_sa} established with peer {peer} ({remote_id} at {remote}), role {role:?}, NAT local {} remote {}",
            nat.local_behind_nat, nat.remote_behind_nat
        ),
        IkeEvent::AuthFailed { ike_sa, peer, why } => {
            format!("IKE SA {ike_sa} with peer {peer}: authentication failed: {why}")
        }
        other => format!("IKE event: {other:?}"),
    }
}
