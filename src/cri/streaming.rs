//! Exec, Attach and PortForward: validate and hand out a streaming URL
//! (the sessions themselves run in `crate::streaming`).

use k8s_cri::v1 as cri;
use tonic::Status;

use crate::runtime::streams::ExecParams;
use crate::streaming::{AttachParams, Streaming};

pub fn exec(st: &Streaming, req: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
    let url = st.exec_url(ExecParams {
        container_id: req.container_id,
        cmd: req.cmd,
        tty: req.tty,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    })?;
    Ok(cri::ExecResponse { url })
}

pub fn attach(st: &Streaming, req: cri::AttachRequest) -> Result<cri::AttachResponse, Status> {
    let url = st.attach_url(AttachParams {
        container_id: req.container_id,
        tty: req.tty,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr,
    })?;
    Ok(cri::AttachResponse { url })
}

pub fn port_forward(st: &Streaming, req: cri::PortForwardRequest) -> Result<cri::PortForwardResponse, Status> {
    let url = st.port_forward_url(&req.pod_sandbox_id, &req.port)?;
    Ok(cri::PortForwardResponse { url })
}
