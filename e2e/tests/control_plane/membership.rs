//! Membership changes: demoting a manager (here the leader itself, through a follower) shrinks the
//! Raft group, and the remaining managers keep accepting writes.

use crate::others;
use anyhow::{Result, anyhow};
use e2e::client::{CALL_TIMEOUT, describe, write_label};
use e2e::lab::CONVERGE_TIMEOUT;
use e2e::{Lab, Tuning};
use proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demoting_the_leader_through_a_follower_leaves_two_voters_that_accept_writes() -> Result<()> {
    let mut lab = Lab::cluster("membership", 3, Tuning::fast()).await?;
    lab.wait_voters(3, CONVERGE_TIMEOUT).await?;
    let leader = lab.wait_leader(CONVERGE_TIMEOUT).await?;
    let survivors = others(3, leader);
    let leader_name = lab.hostname(leader).to_string();

    // Asked on a follower, the demotion is carried out by the leader, on itself.
    let mut follower = lab.control(survivors[0]).await?;
    let request = pb::GetNodeRequest { reference: leader_name.clone() };
    let demoted = tokio::time::timeout(CALL_TIMEOUT, follower.demote_node(request))
        .await
        .map_err(|_| anyhow!("demote did not answer in time"))?
        .map_err(|s| anyhow!("demote {leader_name}: {}", describe(&s)))?
        .into_inner();
    assert_eq!(demoted.role, "worker", "{demoted:?}");

    // The two others elect a leader among themselves and list two voters.
    let deadline = std::time::Instant::now() + CONVERGE_TIMEOUT;
    let info = loop {
        let info = lab.info(survivors[1]).await?;
        let voters = info.managers.iter().filter(|m| m.membership == "voter").count();
        let new_leader = info.leader_id != 0 && lab.index_of(info.leader_id) != Some(leader);
        if voters == 2 && info.managers.len() == 2 && new_leader {
            break info;
        }
        if std::time::Instant::now() > deadline {
            return Err(anyhow!("the group did not shrink to two voters: {info:?}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    println!("after demotion: leader {:016x}, {} managers", info.leader_id, info.managers.len());

    // Writes go on through both remaining managers, and the role change is visible.
    for &i in &survivors {
        let mut control = lab.control(i).await?;
        write_label(&mut control, &leader_name, &format!("after-{i}"), "1", CALL_TIMEOUT)
            .await
            .map_err(|s| anyhow!("write through manager {i}: {}", describe(&s)))?;
        let node = control
            .get_node(pb::GetNodeRequest { reference: leader_name.clone() })
            .await
            .map_err(|s| anyhow!(describe(&s)))?
            .into_inner();
        assert_eq!(node.role, "worker", "{node:?}");
    }
    lab.passed();
    Ok(())
}
