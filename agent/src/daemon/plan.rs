//! The executor's decisions as pure functions: (assignments, local containers) -> actions, and
//! the images an image collection must keep.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proto::v1::Assignment;

use super::container::{is_terminal, rank, wants_run};

/// Where the agent is with a task's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// PREPARING reported; image and rootfs under way.
    Preparing,
    /// Image and rootfs ready (READY reported); waits for desired RUNNING.
    Ready,
    /// STARTING reported; `run` under way.
    Starting,
    /// The container runs.
    Running,
    /// A stop is under way.
    Stopping,
    /// The container exited (or never started); its final state was reported.
    Finished,
    /// Container and rootfs are being deleted.
    Removing,
}

/// One action of the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Pull the image and mount the rootfs of a task.
    Prepare(String),
    /// Run the prepared container.
    Run(String),
    /// Release a prepared task that will not run and report SHUTDOWN.
    Discard(String),
    /// Stop the running container and report SHUTDOWN.
    Stop(String),
    /// Report SHUTDOWN for a task that never got a container here.
    ReportShutdown(String),
    /// The manager thinks it runs here but there is no container: report FAILED.
    ReportLost(String),
    /// Stop if needed, then delete the container of a task no longer assigned.
    Remove(String),
}

/// What to do, given the tasks assigned to the node and the local phases (by task id).
pub fn decide(
    assigned: &BTreeMap<String, Assignment>,
    local: &HashMap<String, Phase>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for (id, a) in assigned {
        let Some(task) = a.task.as_ref() else {
            continue;
        };
        let observed = task.state.as_str();
        let phase = local.get(id);
        if wants_run(&task.desired_state) {
            match phase {
                None if rank(observed) < rank("starting") => {
                    actions.push(Action::Prepare(id.clone()))
                }
                Some(Phase::Ready) if task.desired_state != "ready" => {
                    actions.push(Action::Run(id.clone()))
                }
                None if !is_terminal(observed) => actions.push(Action::ReportLost(id.clone())),
                _ => {}
            }
        } else {
            match phase {
                Some(Phase::Running) => actions.push(Action::Stop(id.clone())),
                Some(Phase::Ready) => actions.push(Action::Discard(id.clone())),
                None if !is_terminal(observed) => actions.push(Action::ReportShutdown(id.clone())),
                // Preparing, Starting: decided again once they are done.
                _ => {}
            }
        }
    }
    let mut gone: Vec<&String> = local
        .iter()
        .filter(|(id, p)| {
            !assigned.contains_key(*id)
                && matches!(p, Phase::Running | Phase::Ready | Phase::Finished)
        })
        .map(|(id, _)| id)
        .collect();
    gone.sort();
    actions.extend(gone.into_iter().map(|id| Action::Remove(id.clone())));
    actions
}

/// The image a task's local entry may hold a root filesystem of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageUse {
    /// No rootfs: not prepared (yet), or preparing failed.
    None,
    /// Prepared by this process from this pinned reference (`...@sha256:...`).
    Known(String),
    /// A container found at start, prepared by an earlier agent process.
    Unknown,
}

/// What an image collection must keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keep {
    /// Images as task specs and prepares name them: pinned references, or tags (whatever a tag
    /// was resolved to on this node is kept). Sorted, without duplicates.
    pub references: Vec<String>,
    /// Containers (task ids) whose image only the image store's own records can tell: found at
    /// start and not assigned with a pinned image. Sorted.
    pub containers: Vec<String>,
}

fn is_pinned(reference: &str) -> bool {
    reference.contains('@')
}

/// The images to keep: those of every assigned task (to start, or started), and of every local
/// container (`uses`, by task id), running or stopped but not yet removed.
pub fn keep_images(
    assigned: &BTreeMap<String, Assignment>,
    uses: &HashMap<String, ImageUse>,
) -> Keep {
    let spec_image = |id: &str| {
        assigned
            .get(id)
            .and_then(|a| a.spec.as_ref())
            .map(|s| s.image.as_str())
            .filter(|i| !i.is_empty())
    };
    let mut references: BTreeSet<String> = assigned
        .keys()
        .filter_map(|id| spec_image(id))
        .map(str::to_string)
        .collect();
    let mut containers = BTreeSet::new();
    for (id, used) in uses {
        match used {
            ImageUse::None => {}
            ImageUse::Known(r) => {
                references.insert(r.clone());
            }
            // A task's spec does not change: a pinned one is what its container was made from.
            ImageUse::Unknown if spec_image(id).is_some_and(is_pinned) => {}
            ImageUse::Unknown => {
                containers.insert(id.clone());
            }
        }
    }
    Keep {
        references: references.into_iter().collect(),
        containers: containers.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::{ServiceSpec, Task};

    fn assign(id: &str, desired: &str, state: &str) -> (String, Assignment) {
        let task = Task {
            id: id.into(),
            desired_state: desired.into(),
            state: state.into(),
            ..Default::default()
        };
        (
            id.into(),
            Assignment {
                task: Some(task),
                spec: None,
            },
        )
    }

    fn run(assigned: &[(String, Assignment)], local: &[(&str, Phase)]) -> Vec<Action> {
        let a = assigned.iter().cloned().collect();
        let l = local
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        decide(&a, &l)
    }

    #[test]
    fn new_tasks_start_once() {
        let a = [
            assign("t1", "running", "assigned"),
            assign("t2", "complete", "assigned"),
        ];
        assert_eq!(
            run(&a, &[]),
            [Action::Prepare("t1".into()), Action::Prepare("t2".into())]
        );
        assert_eq!(
            run(&a, &[("t1", Phase::Preparing), ("t2", Phase::Running)]),
            []
        );
        assert_eq!(
            run(&a, &[("t1", Phase::Ready), ("t2", Phase::Ready)]),
            [Action::Run("t1".into()), Action::Run("t2".into())]
        );
    }

    #[test]
    fn desired_ready_prepares_without_running() {
        let a = [assign("t1", "ready", "assigned")];
        assert_eq!(run(&a, &[]), [Action::Prepare("t1".into())]);
        assert_eq!(run(&a, &[("t1", Phase::Ready)]), []);
        let stop = [assign("t1", "shutdown", "ready")];
        assert_eq!(
            run(&stop, &[("t1", Phase::Ready)]),
            [Action::Discard("t1".into())]
        );
    }

    #[test]
    fn finished_tasks_are_not_restarted() {
        let a = [assign("t1", "running", "failed")];
        assert_eq!(run(&a, &[]), []);
        assert_eq!(run(&a, &[("t1", Phase::Finished)]), []);
    }

    #[test]
    fn running_tasks_without_container_are_lost() {
        let a = [assign("t1", "running", "running")];
        assert_eq!(run(&a, &[]), [Action::ReportLost("t1".into())]);
    }

    #[test]
    fn tasks_beyond_running_are_stopped() {
        let a = [assign("t1", "shutdown", "running")];
        assert_eq!(
            run(&a, &[("t1", Phase::Running)]),
            [Action::Stop("t1".into())]
        );
        assert_eq!(run(&a, &[("t1", Phase::Starting)]), []);
        assert_eq!(run(&a, &[("t1", Phase::Preparing)]), []);
        assert_eq!(run(&a, &[("t1", Phase::Stopping)]), []);
        assert_eq!(run(&a, &[]), [Action::ReportShutdown("t1".into())]);
        let done = [assign("t1", "shutdown", "shutdown")];
        assert_eq!(run(&done, &[]), []);
    }

    #[test]
    fn unassigned_containers_are_removed() {
        let l = [
            ("a", Phase::Running),
            ("b", Phase::Finished),
            ("c", Phase::Starting),
            ("d", Phase::Preparing),
        ];
        assert_eq!(
            run(&[], &l),
            [Action::Remove("a".into()), Action::Remove("b".into())]
        );
        assert_eq!(run(&[], &[("a", Phase::Removing)]), []);
    }

    fn with_image(mut a: (String, Assignment), image: &str) -> (String, Assignment) {
        a.1.spec = Some(ServiceSpec {
            image: image.into(),
            ..Default::default()
        });
        a
    }

    #[test]
    fn collection_keeps_assigned_and_local_images() {
        let pinned = |r: &str| format!("{r}@sha256:{}", "a".repeat(64));
        let assigned: BTreeMap<String, Assignment> = [
            with_image(assign("new", "running", "assigned"), &pinned("r/new:1")),
            with_image(assign("done", "shutdown", "complete"), &pinned("r/done:1")),
            with_image(assign("tag", "running", "running"), "r/tag:1"),
            with_image(
                assign("adopted", "running", "running"),
                &pinned("r/adopted:1"),
            ),
            with_image(assign("adopted-tag", "running", "running"), "r/atag:1"),
            assign("no-spec", "running", "assigned"),
        ]
        .into_iter()
        .collect();
        let uses: HashMap<String, ImageUse> = [
            ("new", ImageUse::None),
            ("tag", ImageUse::Known(pinned("r/tag:1"))),
            ("adopted", ImageUse::Unknown),
            ("adopted-tag", ImageUse::Unknown),
            ("old", ImageUse::Unknown),
            ("removing", ImageUse::Known(pinned("r/removing:1"))),
            ("failed", ImageUse::None),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let keep = keep_images(&assigned, &uses);
        assert_eq!(
            keep.references,
            [
                pinned("r/adopted:1"),
                "r/atag:1".into(),
                pinned("r/done:1"),
                pinned("r/new:1"),
                pinned("r/removing:1"),
                "r/tag:1".into(),
                pinned("r/tag:1"),
            ]
        );
        assert_eq!(keep.containers, ["adopted-tag", "old"]);
        assert_eq!(
            keep_images(&BTreeMap::new(), &HashMap::new()),
            Keep::default()
        );
    }
}
