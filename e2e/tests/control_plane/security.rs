//! Security: roles in certificates, join tokens, foreign certificates, token rotation.

use super::TARGET;
use anyhow::{Context, Result, anyhow};
use e2e::client::{
    self, CALL_TIMEOUT, describe, join_token, list_nodes, node_labels, request_certificate,
    write_label,
};
use e2e::{Lab, Tuning, expect_code};
use identity::{Credentials, JoinToken};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refuses_workers_bad_tokens_foreign_admins_and_rotated_tokens() -> Result<()> {
    let mut lab = Lab::cluster("security", 1, Tuning::fast()).await?;
    let addr = lab.addr(0).to_string();
    let mut admin = lab.control(0).await?;
    let digest = lab.admin().credentials.ca_digest()?;
    let worker_token = join_token(&mut admin, "worker", false)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    let manager_token = join_token(&mut admin, "manager", false)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    assert_ne!(worker_token, manager_token);
    assert_eq!(JoinToken::parse(&worker_token)?.ca_digest, digest);

    // A worker certificate is refused on the Control API, and writes nothing.
    let (worker_creds, worker_id) = client::join_worker(&addr, &worker_token, "w1").await?;
    assert_eq!(worker_creds.identity()?.role, identity::Role::Worker);
    let mut as_worker = client::control(&addr, &worker_creds).await?;
    let status = expect_code(
        write_label(&mut as_worker, TARGET, "worker-wrote", "1", CALL_TIMEOUT).await,
        Code::PermissionDenied,
        "UpdateNode with a worker certificate",
    )?;
    println!("worker UpdateNode: {}", describe(&status));
    expect_code(
        client::info(&mut as_worker, CALL_TIMEOUT).await,
        Code::PermissionDenied,
        "Info as a worker",
    )?;
    expect_code(
        list_nodes(&mut as_worker, CALL_TIMEOUT).await,
        Code::PermissionDenied,
        "ListNodes as a worker",
    )?;
    expect_code(
        join_token(&mut as_worker, "manager", false).await,
        Code::PermissionDenied,
        "GetJoinToken as a worker",
    )?;
    expect_code(
        join_token(&mut as_worker, "worker", true).await,
        Code::PermissionDenied,
        "rotating a token as a worker",
    )?;
    for node in [TARGET, worker_id.as_str()] {
        let labels = node_labels(&mut admin, node, CALL_TIMEOUT)
            .await
            .map_err(|s| anyhow!(describe(&s)))?;
        assert!(
            !labels.contains_key("worker-wrote"),
            "the worker's write landed on {node}: {labels:?}"
        );
    }
    assert_eq!(
        join_token(&mut admin, "worker", false)
            .await
            .map_err(|s| anyhow!(describe(&s)))?,
        worker_token
    );

    // Bad join tokens are refused at IssueCertificate with a clear error, and add no node.
    let nodes_before = list_nodes(&mut admin, CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    let mut other = Lab::cluster("security-other", 1, Tuning::fast()).await?;
    let other_digest = other.admin().credentials.ca_digest()?;
    let wrong_secret = JoinToken::format(&digest, &JoinToken::generate_secret());
    let (result, _) =
        request_certificate(&addr, &wrong_secret, None, "bad-secret", "127.0.0.9").await?;
    let status = expect_code(
        result,
        Code::PermissionDenied,
        "a token with a wrong secret",
    )?;
    assert!(
        status.message().contains("secret"),
        "unclear error: {}",
        describe(&status)
    );
    println!("wrong secret: {}", describe(&status));

    let secret = JoinToken::parse(&worker_token)?.secret;
    let wrong_ca = JoinToken::format(&other_digest, &secret);
    // A joining node pins the digest in its token: it refuses to talk to this cluster at all.
    match request_certificate(&addr, &wrong_ca, None, "bad-ca", "127.0.0.9").await {
        Err(e) => {
            let text = format!("{e:#}");
            println!("wrong CA digest (pinned): {text}");
            assert!(text.contains("CA"), "unclear error: {text}");
        }
        Ok((result, _)) => {
            panic!("a client pinning another cluster's CA reached this cluster: {result:?}")
        }
    }
    // And if it talks anyway, the manager refuses the token.
    let (result, _) =
        request_certificate(&addr, &wrong_ca, Some(&digest), "bad-ca", "127.0.0.9").await?;
    let status = expect_code(
        result,
        Code::PermissionDenied,
        "a token with another cluster's CA digest",
    )?;
    assert!(
        status.message().contains("CA"),
        "unclear error: {}",
        describe(&status)
    );
    println!("wrong CA digest (sent anyway): {}", describe(&status));

    for malformed in [
        "CLSTR-1-abc-def",
        "SWMTKN-1-xyz",
        "",
        &worker_token[..worker_token.len() - 30],
    ] {
        let (result, _) = request_certificate(
            &addr,
            malformed,
            Some(&digest),
            "bad-malformed",
            "127.0.0.9",
        )
        .await?;
        let status = expect_code(
            result,
            Code::InvalidArgument,
            &format!("malformed token {malformed:?}"),
        )?;
        assert!(
            status.message().contains("malformed"),
            "unclear error for {malformed:?}: {}",
            describe(&status)
        );
    }
    let nodes_after = list_nodes(&mut admin, CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    assert_eq!(
        nodes_after.len(),
        nodes_before.len(),
        "refused joins added nodes: {nodes_after:?}"
    );
    assert!(
        nodes_after.iter().all(|n| !n.hostname.starts_with("bad-")),
        "{nodes_after:?}"
    );

    // The admin certificate of another cluster is refused by this one.
    let foreign = other.admin().credentials.clone();
    // (It works on its own cluster: the refusal below is about the cluster, not the certificate.)
    let mut own = client::control(other.addr(0), &foreign).await?;
    write_label(&mut own, TARGET, "own-cluster", "1", CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    // As is, it does not even trust this cluster's managers.
    match client::control(&addr, &foreign).await {
        Err(e) => println!("foreign admin (own CA): refused at connect: {e:#}"),
        Ok(mut c) => {
            let result = write_label(&mut c, TARGET, "foreign", "1", CALL_TIMEOUT).await;
            assert!(
                result.is_err(),
                "a foreign admin (own CA) wrote to this cluster: {result:?}"
            );
            println!("foreign admin (own CA): {}", describe(&result.unwrap_err()));
        }
    }
    // Trusting this cluster's CA but presenting its own certificate: the manager refuses it.
    let mixed = Credentials {
        ca_cert_pem: lab.admin().credentials.ca_cert_pem.clone(),
        ..foreign
    };
    match client::control(&addr, &mixed).await {
        Err(e) => println!("foreign admin certificate: refused at connect: {e:#}"),
        Ok(mut c) => {
            let result = write_label(&mut c, TARGET, "foreign", "1", CALL_TIMEOUT).await;
            assert!(
                result.is_err(),
                "a foreign admin certificate wrote to this cluster: {result:?}"
            );
            println!(
                "foreign admin certificate: {}",
                describe(&result.unwrap_err())
            );
            let result = client::info(&mut c, CALL_TIMEOUT).await;
            assert!(
                result.is_err(),
                "a foreign admin certificate read Info: {result:?}"
            );
        }
    }
    let labels = node_labels(&mut admin, TARGET, CALL_TIMEOUT)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    assert!(!labels.contains_key("foreign"), "{labels:?}");

    // `cluster join-token --rotate worker` makes the old worker token useless.
    let out = lab.cli(&["join-token", "--rotate", "-q", "worker"]).await?;
    assert!(out.success, "join-token --rotate failed: {out:?}");
    let rotated = out.stdout.trim().to_string();
    JoinToken::parse(&rotated).with_context(|| format!("the rotated token {rotated:?}"))?;
    assert_ne!(rotated, worker_token);
    let (result, _) =
        request_certificate(&addr, &worker_token, None, "old-token", "127.0.0.9").await?;
    let status = expect_code(
        result,
        Code::PermissionDenied,
        "the worker token from before the rotation",
    )?;
    println!("rotated-out token: {}", describe(&status));
    client::join_worker(&addr, &rotated, "w2")
        .await
        .context("joining with the rotated token")?;
    let still = join_token(&mut admin, "manager", false)
        .await
        .map_err(|s| anyhow!(describe(&s)))?;
    assert_eq!(
        still, manager_token,
        "rotating the worker token changed the manager token"
    );
    lab.passed();
    other.passed();
    Ok(())
}
