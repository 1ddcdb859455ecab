//! UpdateContainerResources: new resources applied live through the shim
//! (the runtime's update), then journalled as the container's own.

use super::actor::{ContainerActor, Containers};
use super::messages::UpdateContainerResources;
use crate::kernel::Reply;
use crate::shim::messages::UpdateTask;
use crate::{Error, Result};
use actix::fut::{wrap_future, ActorFutureExt};

impl Containers {
    pub(super) fn update_resources(&mut self, msg: UpdateContainerResources) -> Reply<Self, ()> {
        if let Err(e) = super::validate::resources("resources", &msg.resources) {
            return Reply::Now(Err(e));
        }
        let full = match self.running(&msg.id) {
            Ok(f) => f,
            Err(e) => return Reply::Now(Err(e)),
        };
        let json = match super::spec::update_resources(&msg.resources, self.deps.host.hugetlb)
            .and_then(|r| serde_json::to_vec(&r).map_err(|e| Error::Internal(e.to_string())))
        {
            Ok(j) => j,
            Err(e) => return Reply::Now(Err(e)),
        };
        let shim = self.deps.shim.clone();
        let task = full.clone();
        let work = async move {
            shim.call(UpdateTask {
                id: task,
                resources_json: json,
            })
            .await
        };
        let resources = msg.resources;
        Reply::Later(Box::pin(wrap_future(work).map(
            move |res: Result<()>, act: &mut ContainerActor, _| {
                res?;
                if let Some(me) = act.state_mut() {
                    if let Some(mut r) = me.records.get(&full).cloned() {
                        r.config.resources = resources;
                        me.records.put(r)?;
                    }
                }
                Ok(())
            },
        )))
    }
}
