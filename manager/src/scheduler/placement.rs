//! Placement of a group of identical tasks (one service, one spec) over the eligible nodes:
//! hierarchical placement preferences as a tree of label values (spread across values first),
//! and in each leaf a min-heap of nodes by spread key. A node refused by a dynamic filter is
//! dropped from the heap: within a group, filters only get stricter as tasks are placed, so it
//! would refuse every later task of the group too. Each placement costs O(depth x fan-out +
//! log nodes).

use super::constraint::Preference;
use super::view::{ClusterView, Rejections};
use crate::store::ServiceSpec;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

type Key = (u32, u32, usize);

/// A subtree of the preference tree.
pub(crate) struct Branch {
    /// Tasks of the service in the subtree.
    count: u64,
    exhausted: bool,
    kind: BranchKind,
}

enum BranchKind {
    Leaf(BinaryHeap<Reverse<Key>>),
    /// Children in the order of their label values.
    Inner(Vec<Branch>),
}

impl Branch {
    /// Builds the tree of `nodes` (indices into the view) under `preferences`, outermost first.
    pub fn build(view: &ClusterView<'_>, service_id: &str, nodes: Vec<usize>, preferences: &[Preference]) -> Self {
        match preferences.split_first() {
            None => {
                let keys: Vec<Reverse<Key>> =
                    nodes.iter().map(|&index| Reverse(view.spread_key(index, service_id))).collect();
                let count = keys.iter().map(|Reverse((own, _, _))| u64::from(*own)).sum();
                Branch { count, exhausted: keys.is_empty(), kind: BranchKind::Leaf(BinaryHeap::from(keys)) }
            }
            Some((first, rest)) => {
                let mut by_value: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
                for index in nodes {
                    by_value.entry(first.value_of(view.nodes[index].node)).or_default().push(index);
                }
                let children: Vec<Branch> =
                    by_value.into_values().map(|nodes| Branch::build(view, service_id, nodes, rest)).collect();
                Branch {
                    count: children.iter().map(|c| c.count).sum(),
                    exhausted: children.iter().all(|c| c.exhausted),
                    kind: BranchKind::Inner(children),
                }
            }
        }
    }

    /// Picks a node for one task of the group and records it in the tree (not in the view:
    /// the caller does that). Nodes refused on the way are counted in `rejections`. `None`
    /// when no node of the subtree can take the task.
    pub fn place(
        &mut self,
        view: &ClusterView<'_>,
        service_id: &str,
        spec: &ServiceSpec,
        rejections: &mut Rejections,
    ) -> Option<usize> {
        if self.exhausted {
            return None;
        }
        let placed = match &mut self.kind {
            BranchKind::Leaf(heap) => loop {
                let Some(Reverse((own, total, index))) = heap.pop() else { break None };
                match view.dynamic_check(index, service_id, spec) {
                    Ok(()) => {
                        heap.push(Reverse((own + 1, total + 1, index)));
                        break Some(index);
                    }
                    Err(reject) => rejections.add(reject),
                }
            },
            BranchKind::Inner(children) => loop {
                let Some(child) = children.iter_mut().filter(|c| !c.exhausted).min_by_key(|c| c.count) else {
                    break None;
                };
                if let Some(index) = child.place(view, service_id, spec, rejections) {
                    break Some(index);
                }
            },
        };
        match placed {
            Some(_) => self.count += 1,
            None => self.exhausted = true,
        }
        placed
    }
}
