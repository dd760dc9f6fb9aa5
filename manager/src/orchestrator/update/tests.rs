use super::next_update_due;
use crate::orchestrator::testkit::{Sim, global, replicated};
use crate::store::{
    FailureAction, ServiceSpec, Task, TaskState, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};
use std::collections::BTreeSet;

/// Starts an update of `id` to `image`, as the API does.
fn update_image(sim: &mut Sim, id: &str, image: &str) {
    let now = sim.now;
    sim.update_service(id, |service| {
        service.previous_spec = Some(Box::new(service.spec.clone()));
        service.spec.image = image.into();
        service.update_status = Some(UpdateStatus { started_ms: now, ..UpdateStatus::default() });
    });
}

fn config(parallelism: u64, order: UpdateOrder, failure_action: FailureAction) -> UpdateConfig {
    UpdateConfig { parallelism, order, failure_action, monitor_ms: 1_000, ..UpdateConfig::default() }
}

fn spec_with(replicas: u64, update: UpdateConfig) -> ServiceSpec {
    ServiceSpec { image: "web:1".into(), update_config: update, ..replicated(replicas) }
}

fn state(sim: &Sim, id: &str) -> UpdateState {
    sim.store.services[id].update_status.as_ref().map(|s| s.state).unwrap_or_default()
}

/// Live tasks by image.
fn live_images(sim: &Sim, id: &str) -> Vec<String> {
    sim.tasks(id).iter().filter(|t| t.is_live()).map(|t| t.spec.image.clone()).collect()
}

/// Rounds of orchestrators, scheduler and agents, a second apart, where the agents fail every
/// task of `failing_image` once it runs; `check` is called after every round.
fn run(sim: &mut Sim, rounds: usize, failing_image: &str, mut check: impl FnMut(&Sim)) {
    for _ in 0..rounds {
        sim.reconcile();
        sim.schedule();
        sim.agents();
        let failing: Vec<Task> = sim
            .store
            .tasks
            .values()
            .filter(|t| t.spec.image == failing_image && t.status.state == TaskState::Running)
            .cloned()
            .collect();
        for task in failing {
            sim.set_state(&task.meta.id, TaskState::Failed);
        }
        check(sim);
        sim.now += 1_000;
    }
}

#[test]
fn stop_first_replaces_two_slots_at_a_time_and_completes() {
    let mut sim = Sim::new();
    sim.add_node("a");
    sim.add_node("b");
    let web = sim.add_service("web", spec_with(6, config(2, UpdateOrder::StopFirst, FailureAction::Pause)));
    sim.converge();
    update_image(&mut sim, &web, "web:2");
    sim.reconcile();
    let tasks = sim.tasks(&web);
    let stopping = tasks.iter().filter(|t| t.desired_state == TaskState::Shutdown).count();
    let waiting = tasks.iter().filter(|t| t.desired_state == TaskState::Ready && t.spec.image == "web:2").count();
    assert_eq!((stopping, waiting), (2, 2), "one batch of two slots");
    let mut most_live = 0;
    run(&mut sim, 20, "", |sim| most_live = most_live.max(sim.tasks(&web).iter().filter(|t| t.is_live()).count()));
    assert_eq!(live_images(&sim, &web), vec!["web:2"; 6]);
    assert_eq!(sim.running(&web).len(), 6);
    assert_eq!(state(&sim, &web), UpdateState::Completed);
    assert_eq!(most_live, 6, "stop-first never runs more than the replicas");
}

#[test]
fn start_first_keeps_every_slot_running() {
    let mut sim = Sim::new();
    sim.add_node("a");
    let web = sim.add_service("web", spec_with(4, config(2, UpdateOrder::StartFirst, FailureAction::Pause)));
    sim.converge();
    update_image(&mut sim, &web, "web:2");
    run(&mut sim, 20, "", |sim| {
        let slots: BTreeSet<u64> = sim.running(&web).iter().map(|t| t.slot).collect();
        assert_eq!(slots.len(), 4, "a slot without a running task");
    });
    assert_eq!(live_images(&sim, &web), vec!["web:2"; 4]);
    assert_eq!(state(&sim, &web), UpdateState::Completed);
}

#[test]
fn a_failing_replacement_pauses_the_update() {
    let mut sim = Sim::new();
    sim.add_node("a");
    let web = sim.add_service("web", spec_with(3, config(1, UpdateOrder::StartFirst, FailureAction::Pause)));
    sim.converge();
    update_image(&mut sim, &web, "web:bad");
    run(&mut sim, 10, "web:bad", |_| {});
    assert_eq!(state(&sim, &web), UpdateState::Paused);
    let status = sim.store.services[&web].update_status.clone().unwrap_or_default();
    assert!(status.message.starts_with("update paused due to failure or early termination of task"), "{status:?}");
    // Start-first: the old tasks of the other slots and the first slot's old task still run.
    let old_running = sim.running(&web).iter().filter(|t| t.spec.image == "web:1").count();
    assert_eq!(old_running, 3);
}

#[test]
fn a_failing_replacement_rolls_back_to_the_old_image() {
    let mut sim = Sim::new();
    sim.add_node("a");
    sim.add_node("b");
    let web = sim.add_service("web", spec_with(4, config(2, UpdateOrder::StopFirst, FailureAction::Rollback)));
    sim.converge();
    update_image(&mut sim, &web, "web:bad");
    run(&mut sim, 30, "web:bad", |_| {});
    let service = &sim.store.services[&web];
    assert_eq!(service.spec.image, "web:1");
    assert_eq!(service.previous_spec.as_ref().map(|s| s.image.as_str()), Some("web:bad"));
    assert_eq!(state(&sim, &web), UpdateState::RollbackCompleted);
    assert_eq!(live_images(&sim, &web), vec!["web:1"; 4]);
    assert_eq!(sim.running(&web).len(), 4);
}

#[test]
fn failures_within_the_ratio_are_tolerated() {
    let mut sim = Sim::new();
    sim.add_node("a");
    let mut update = config(0, UpdateOrder::StopFirst, FailureAction::Pause);
    update.max_failure_ppm = 500_000;
    let web = sim.add_service("web", spec_with(4, update));
    sim.converge();
    update_image(&mut sim, &web, "web:2");
    // One of four replacements fails once (25 % <= 50 %); its restart runs.
    sim.reconcile();
    sim.schedule();
    sim.agents();
    sim.reconcile();
    sim.agents();
    let first = sim.running(&web).into_iter().find(|t| t.spec.image == "web:2").map(|t| t.meta.id);
    sim.set_state(&first.unwrap_or_default(), TaskState::Failed);
    run(&mut sim, 10, "", |_| {});
    assert_eq!(state(&sim, &web), UpdateState::Completed);
    assert_eq!(sim.store.services[&web].update_status.as_ref().map(|s| s.failures), Some(1));
    assert_eq!(live_images(&sim, &web), vec!["web:2"; 4]);
}

#[test]
fn the_delay_holds_the_next_slot_and_wakes_the_leader() {
    let mut sim = Sim::new();
    sim.add_node("a");
    let mut update = config(1, UpdateOrder::StartFirst, FailureAction::Pause);
    update.delay_ms = 10_000;
    let web = sim.add_service("web", spec_with(2, update));
    sim.converge();
    update_image(&mut sim, &web, "web:2");
    sim.converge();
    // The first slot is replaced; the second waits for the delay.
    assert_eq!(live_images(&sim, &web), vec!["web:2", "web:1"]);
    let due = next_update_due(sim.store.services.values(), sim.now);
    assert!(due.is_some_and(|due| due > sim.now && due <= sim.now + 10_000), "{due:?}");
    sim.now += 10_000;
    sim.converge();
    sim.now += 1_000;
    sim.converge();
    assert_eq!(live_images(&sim, &web), vec!["web:2", "web:2"]);
    assert_eq!(state(&sim, &web), UpdateState::Completed);
    assert_eq!(next_update_due(sim.store.services.values(), sim.now), None);
}

#[test]
fn global_start_first_keeps_one_task_per_node_running() {
    let mut sim = Sim::new();
    sim.add_node("a");
    sim.add_node("b");
    let mut spec = ServiceSpec { image: "agent:1".into(), ..global() };
    spec.update_config = config(1, UpdateOrder::StartFirst, FailureAction::Pause);
    let agent = sim.add_service("agent", spec);
    sim.converge();
    update_image(&mut sim, &agent, "agent:2");
    run(&mut sim, 12, "", |sim| assert_eq!(sim.running_per_node(&agent).len(), 2));
    assert_eq!(live_images(&sim, &agent), vec!["agent:2"; 2]);
    assert_eq!(state(&sim, &agent), UpdateState::Completed);
}

#[test]
fn scaling_does_not_count_as_a_change_of_the_tasks() {
    let spec = replicated(3);
    let mut scaled = spec.clone();
    scaled.mode = crate::store::ServiceMode::Replicated { replicas: 5 };
    scaled.update_config.parallelism = 4;
    assert!(spec.same_task_as(&scaled));
    let mut forced = spec.clone();
    forced.force_update += 1;
    assert!(!spec.same_task_as(&forced));
}

#[test]
fn a_start_first_update_with_a_health_check_completes_once_healthy() {
    let mut sim = Sim::new();
    sim.add_node("a");
    sim.add_node("b");
    let mut spec = spec_with(4, config(2, UpdateOrder::StartFirst, FailureAction::Rollback));
    spec.healthcheck = Some(crate::store::HealthCheck { test: vec!["CMD".into(), "true".into()], ..Default::default() });
    let web = sim.add_service("web", spec);
    let healthy = |sim: &mut Sim| {
        let running: Vec<Task> = sim
            .store
            .tasks
            .values()
            .filter(|t| t.status.state == TaskState::Running && t.status.health.is_empty())
            .cloned()
            .collect();
        for mut task in running {
            task.status.health = "healthy".into();
            sim.apply(vec![crate::store::Change::Update { object: crate::store::Object::Task(task), expected_version: None }]);
        }
    };
    for _ in 0..5 {
        sim.converge();
        healthy(&mut sim);
    }
    update_image(&mut sim, &web, "web:2");
    run(&mut sim, 20, "", |_| {});
    for _ in 0..20 {
        sim.reconcile();
        sim.schedule();
        sim.agents();
        healthy(&mut sim);
        sim.now += 1_000;
    }
    assert_eq!(live_images(&sim, &web), vec!["web:2"; 4]);
    assert_eq!(state(&sim, &web), UpdateState::Completed, "{:?}", sim.store.services[&web].update_status);
}

#[test]
fn the_leader_is_woken_for_the_end_of_the_monitor_period() {
    let mut sim = Sim::new();
    sim.add_node("a");
    let web = sim.add_service("web", spec_with(1, config(1, UpdateOrder::StartFirst, FailureAction::Pause)));
    sim.converge();
    update_image(&mut sim, &web, "web:2");
    // Without time passing, the replacement runs and is watched; the delay (0) is behind us.
    sim.converge();
    assert_eq!(state(&sim, &web), UpdateState::Updating);
    assert_eq!(next_update_due(sim.store.services.values(), sim.now), Some(sim.now + 1_000));
    sim.now += 1_000;
    sim.converge();
    assert_eq!(state(&sim, &web), UpdateState::Completed);
}
