//! The platform's one address (`[settings] vip`): keepalived on every host of the public services
//! (`templates/keepalived/`), moving the address by VRRP to a host whose services answer ready.

use tera::Context;

use super::inventory::Host;
use super::{text_file, RenderError, Renderer};
use crate::desired::{DesiredFile, Handler};

pub const KEEPALIVED_UNIT: &str = "keepalived";
pub const KEEPALIVED_CONF: &str = "/etc/keepalived/keepalived.conf";

/// Seconds of failed readiness before a holder gives the address up.
const FALL: u32 = 3;

impl Renderer<'_> {
    /// The hosts that may hold the VIP: those running a public service, in file order.
    fn vip_holders(&self) -> Vec<&Host> {
        let platform = &self.inventory.platform;
        self.inventory
            .hosts
            .iter()
            .filter(|host| {
                host.services
                    .iter()
                    .any(|name| platform.service(name).is_some_and(|service| service.public))
            })
            .collect()
    }

    /// keepalived's configuration on `host`, when the inventory has a VIP and `host` may hold it.
    pub fn keepalived(&self, host: &Host) -> Result<Option<DesiredFile>, RenderError> {
        let Some(vip) = &self.inventory.settings.vip else {
            return Ok(None);
        };
        let holders = self.vip_holders();
        let Some(place) = holders.iter().position(|holder| holder.name == host.name) else {
            return Ok(None);
        };
        // Ready means every public service of this host is: one curl per service, all must pass.
        let public: Vec<_> = self
            .inventory
            .services_of(host)
            .filter(|service| service.public)
            .collect();
        let check = public
            .iter()
            .map(|service| {
                let spec = self.spec(host, service);
                format!(
                    "/usr/bin/curl -fsS -o /dev/null --max-time 1 {}",
                    spec.curl_args(&spec.ready_url)
                )
            })
            .collect::<Vec<_>>()
            .join(" && ");
        let check = if public.len() > 1 {
            format!("/bin/sh -c '{check}'")
        } else {
            check
        };
        let mut context = Context::new();
        context.insert("host", &host.name);
        context.insert("vip", &vip.address.to_string());
        context.insert("interface", &vip.interface);
        context.insert(
            "holders",
            &holders.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        );
        context.insert(
            "services",
            &public.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        );
        context.insert("check", &check);
        context.insert("fall", &FALL);
        // VRRP's router id, unique per address on a network: the VIP's last byte.
        context.insert("router_id", &vip.address.octets()[3].max(1));
        // The first host is preferred; priorities stay within VRRP's 1 to 254.
        context.insert("priority", &(150usize.saturating_sub(place).max(1)));
        context.insert("address", host.address());
        context.insert(
            "peers",
            &holders
                .iter()
                .filter(|holder| holder.name != host.name)
                .map(|holder| holder.address())
                .collect::<Vec<_>>(),
        );
        Ok(Some(text_file(
            KEEPALIVED_CONF,
            self.render("keepalived/keepalived.conf", host, &context)?,
            0o644,
            "root",
            vec![Handler::Restart(KEEPALIVED_UNIT.to_owned())],
        )))
    }
}
