//! Service-defined actions: a `[task#<name>]` section of a service config is an action
//! `service_action` runs by name, its arguments passed through
//! (`["compliance", "fix", "--moduleset", "foo"]` runs the task's command with
//! `fix --moduleset foo` as `"$@"`), synchronously or as a job, on the instance's node.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::api;
use crate::wire::Doc;

use super::exec;
use super::instance::Ctx;
use super::instance::Transcript;
use crate::api::options;
use crate::api::Action;
use crate::api::ApiError;
use crate::model::service::Task;
use crate::services::Host;
use crate::wire::Status;

type Result<T> = std::result::Result<T, ApiError>;

/// Most arguments a task takes, and the longest one (bytes).
pub const MAX_ARGS: (usize, usize) = (64, 4096);

/// Runs `task` of `svc` on this node with `args`, holding the instance lock (a task does
/// not run while an instance action does); `holds` is set once the lock is held.
pub async fn run(
    cx: &Ctx,
    svc: &str,
    task: &Task,
    args: &[String],
    holds: Option<&AtomicBool>,
) -> Transcript {
    let rt = cx.local.instance(svc);
    let _mem = rt.mem.lock().await;
    if let Some(h) = holds {
        h.store(true, Ordering::SeqCst);
    }
    let dir = cx.local.logs.svc_dir(svc);
    let _ = std::fs::create_dir_all(&dir);
    let env = vec![
        ("OM_SVCNAME".to_string(), svc.to_string()),
        ("OM_TASK".to_string(), task.name.clone()),
        ("OM_NODENAME".to_string(), cx.me.clone()),
        ("OM_VAR".to_string(), dir.display().to_string()),
        (
            "OSVC_ROOT".to_string(),
            cx.host.paths().root.display().to_string(),
        ),
    ];
    let cmd = format!("{} \"$@\"", task.command);
    let out = exec::run_sh_args(&cmd, args, &env, &dir, task.timeout, Some(&rt.running)).await;
    let msg = format!(
        "task {} {}: exited {} in {:.2}s",
        task.name,
        args.join(" "),
        out.ret,
        out.elapsed.as_secs_f64()
    );
    if out.ok() {
        cx.local.logs.info(svc, msg);
    } else {
        cx.local.logs.warn(svc, msg);
    }
    Transcript {
        out: out.out,
        err: out.err,
        ret: out.ret,
    }
}

/// `service_action` whose verb is not an instance action: the service's task of that name.
pub async fn action(
    host: &Arc<dyn Host>,
    o: options::ServiceAction,
    argv: Vec<String>,
) -> Result<Doc> {
    let svc = o.svcname.clone();
    let cfg = super::current_config(host, &svc)?;
    let Some(task) = cfg.tasks.get(&argv[0]).cloned() else {
        let tasks: Vec<&str> = cfg.tasks.keys().map(String::as_str).collect();
        return Err(ApiError::bad(format!(
            "unknown action {:?}; actions: {}{}",
            argv[0],
            crate::model::action::Verb::list(),
            if tasks.is_empty() {
                String::new()
            } else {
                format!("; tasks of {svc}: {}", tasks.join(", "))
            }
        )));
    };
    let args = argv[1..].to_vec();
    if args.len() > MAX_ARGS.0
        || args
            .iter()
            .any(|a| a.len() > MAX_ARGS.1 || a.contains('\0'))
    {
        return Err(ApiError::bad(format!(
            "command: a task takes at most {} arguments of {} bytes, without NUL",
            MAX_ARGS.0, MAX_ARGS.1
        )));
    }
    let me = host.me();
    let sync = o.sync.unwrap_or(true);
    if let Some(node) = o.node.as_deref().filter(|n| *n != me) {
        let timeout = task.timeout + std::time::Duration::from_secs(15);
        return super::host::ask(&**host, node, Action::ServiceAction, &o, timeout).await;
    }
    if !cfg.lists(&me) {
        return Err(ApiError::bad(format!(
            "service {svc} has no instance on {me}: its nodes are {}",
            cfg.nodes.join(" ")
        )));
    }
    let cx = super::ctx(host);
    if sync {
        let tr = run(&cx, &svc, &task, &args, None).await;
        return api::reply(&options::ActionDone {
            node: me,
            out: tr.out,
            err: tr.err,
            ret: tr.ret,
        });
    }
    let rt = cx.local.instance(&svc);
    let holds = Arc::new(AtomicBool::new(false));
    let (cx2, svc2, holds2) = (cx.clone(), svc.clone(), holds.clone());
    let rec = cx
        .local
        .jobs
        .submit(&me, &svc, argv, rt, holds, async move {
            run(&cx2, &svc2, &task, &args, Some(&holds2)).await
        })
        .map_err(|e| ApiError::new(Status::Error, e.to_string()))?;
    api::reply(&options::ActionSubmitted {
        node: me,
        job_id: rec.id.clone(),
        job: rec,
    })
}
