//! Schema validation of the networking kinds.

use super::*;
use crate::validate::{Checker, Validate};

impl Validate for VirtualService {
    fn validate(&self, _cx: &mut Checker<'_>) {}
}
impl Validate for DestinationRule {
    fn validate(&self, _cx: &mut Checker<'_>) {}
}
impl Validate for Gateway {
    fn validate(&self, _cx: &mut Checker<'_>) {}
}
impl Validate for ServiceEntry {
    fn validate(&self, _cx: &mut Checker<'_>) {}
}
impl Validate for WorkloadEntry {
    fn validate(&self, _cx: &mut Checker<'_>) {}
}
