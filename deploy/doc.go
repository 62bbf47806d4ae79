// Package deploy ships the app server to the fleet: build or take an artifact, stage it on
// every host in parallel over SSH, activate it batch by batch behind the load balancer with a
// health gate, roll back automatically when too many hosts fail, and record everything.
//
// A run is planned first: [NewPlan] is pure and returns a [Plan] value listing the batches,
// the failure policy and the exact remote command of every step ([Plan.Render] is
// --dry-run). A [Deployer] then executes it:
//
//   - unchanged check (deploy only): one connection and one probe per host, the lock's state
//     read with the lock host's probe; when every host already runs the release sealed and
//     healthy and the lock is free, the run ends there without taking the lock (it changes
//     nothing, so there is nothing to serialize; a held lock, even a stale one, sends it on
//     to the lock as below). The report still goes to the journal and the local audit log;
//   - lock: a stack-wide lock, mkdir(2) of <path>/.instactl/lock on the first host of the
//     role with info.json (holder, time, release, message, run id); a second run gets a
//     [*LockedError] (exit 4);
//   - stage (deploy only): one SSH connection per host, reused for every step; a probe skips
//     hosts whose releases/<id>/ is sealed with the right sha256 and size. With S3 staging
//     (Config.Staging StagingS3, the default when the stack has a bucket) the artifact is
//     put once in the bucket under <prefix>/<sha256> (skipped when a HEAD finds that sha256
//     and size there) and every host that needs it fetches it with a short-lived presigned
//     URL in one SSH exec ([FetchCommand]: curl or wget, size and sha256 checked, renamed
//     into place, sealed); a host whose fetch fails, or every host when the bucket cannot
//     be used, gets it over SSH instead and its report says why. Over SSH the artifact is
//     streamed with remote.UploadSum in one session that also seals the release (the host
//     checks the planned sha256 and renames into place; the client does not hash every copy
//     it sends). [Report.BytesSent] counts what left this machine;
//   - activate, per batch: deregister from the LB and wait until it reports the hosts out
//     (at most DrainTimeout), flip current atomically (symlink + rename), restart through the
//     service manager, health-gate over HTTP from instactl, register the healthy hosts back,
//     write a per-host marker;
//   - canary analysis (Config.Canary, the stack's deploy.canary): after the first batch is
//     back behind the LB, its hosts are compared with as many hosts of the later batches
//     (still on the previous release) over one window of their own /metrics (package
//     canary); fail rolls the first batch back and stops with a [*CanaryError], pass goes
//     on, inconclusive (too little traffic by the end of max_window) goes on with the
//     verdict in the report, or rolls back like fail under on_inconclusive: rollback. A resumed run judges the first batch when the interrupted
//     run died before a verdict, and does not repeat a recorded one;
//   - failure policy: failed hosts are rolled back to the release they ran before; when more
//     hosts failed than max-fail allows, every host of the batch is rolled back and the run
//     stops before the next batch with a [*MaxFailError];
//   - prune releases beyond keep_releases on the hosts that took a new release (never
//     current nor the rollback target), append the [Report] as one JSON line to the local
//     audit log and, with only its own host entry, to the log of each host the run changed
//     or failed on, unlock.
//
// Every run has a run id and a journal (<state dir>/runs/<run-id>.json: the plan and the
// report so far, rewritten in the background after host changes, at most one write behind,
// and in full when the run ends), plus per-host markers
// (<path>/.instactl/runs/<run-id>); [Deployer.Resume] finishes an interrupted run touching
// only unfinished hosts; if its batch then breaches max-fail, the hosts the interrupted run
// had already switched are rolled back with the rest. An interrupted run (its context ended) keeps the lock, so nobody
// deploys over a half-done run by accident.
//
// Release ids come from the artifact's content (the first 12 hex digits of its sha256), so
// the same artifact is the same release and a redeploy uploads nothing. Each host keeps a
// history of activated releases (<path>/.instactl/history) used as a stack: a rollback
// without a named release pops back to the one before.
//
// The package never prints: progress is a stream of typed [Event]s through
// [Deployer.OnEvent], results are values.
package deploy
