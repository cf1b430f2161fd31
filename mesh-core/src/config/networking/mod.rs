//! `networking.istio.io` resources: VirtualService, DestinationRule, Gateway, ServiceEntry,
//! WorkloadEntry.

pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
mod validation;
pub mod virtual_service;
pub mod workload_entry;

pub use self::{
    destination_rule::DestinationRule, gateway::Gateway, service_entry::ServiceEntry,
    virtual_service::VirtualService, workload_entry::WorkloadEntry,
};
