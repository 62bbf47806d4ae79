package deploy

import (
	"fmt"
	"path"
	"regexp"

	"github.com/instactl/instactl/remote"
	"github.com/instactl/instactl/templates"
)

// Layout of a deploy root (Config.Path, /opt/instagram by default) on every host:
//
//	releases/<id>/<binary>        the staged artifact (mode 0755)
//	releases/<id>/.sha256         its sha256, written only after the host verified the upload
//	current -> <path>/releases/<id>   the live release, flipped with rename(2)
//	.instactl/history             activated release ids, oldest first (a stack: rollback pops)
//	.instactl/runs/<run-id>       per-host marker of a finished run ("activated <id>")
//	.instactl/lock/info.json      the stack-wide deploy lock (first host of the role only)
const (
	releasesDir = "releases"
	stateDir    = ".instactl"
	shaFile     = ".sha256"
)

// idRe is what release and run ids may contain; they are spliced into scripts only after
// passing it (and are quoted anyway).
var idRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// checkID refuses an id that is not a plain name.
func checkID(kind, id string) error {
	if !idRe.MatchString(id) {
		return fmt.Errorf("%s %q is not valid: use letters, digits, '.', '_' and '-'", kind, id)
	}
	return nil
}

// ReleaseDir is <root>/releases/<id>.
func ReleaseDir(root, id string) string { return path.Join(root, releasesDir, id) }

// BinaryPath is where the artifact of release id lives on a host.
func BinaryPath(root, id, binary string) string { return path.Join(ReleaseDir(root, id), binary) }

// ProbeCommand prints, on one line each, "current <id>" (empty when no release is live) and
// "present" when the release is staged and sealed with the expected sha256 and its binary
// was not modified after the seal, or "absent". Stage runs it first so a host that already
// holds the release uploads nothing.
//
// It starts no process besides the shell: on an unchanged redeploy this probe is the only
// session a host sees, and the hosts' CPU is what the run waits for. So `cd -P` resolves
// current instead of a readlink, and the binary is checked against its seal with test's -nt
// instead of a stat of its size: both staging paths write the seal after the verified binary
// is in place, so any later write to the binary (a truncation as well as an overwrite of the
// same size) makes it newer than the seal and the release is staged again.
func ProbeCommand(root, id, binary, sha string) remote.Command {
	script := fmt.Sprintf(`root=%s bin=%s sum=%s want=%s
cur=
cd -P -- "$root/current" 2>/dev/null && cur=$PWD
echo "current ${cur##*/}"
got=
[ -r "$sum" ] && read -r got < "$sum"
if [ -x "$bin" ] && [ "$got" = "$want" ] && ! [ "$bin" -nt "$sum" ]; then
  echo present
else
  echo absent
fi`, remote.Quote(root), remote.Quote(BinaryPath(root, id, binary)),
		remote.Quote(path.Join(ReleaseDir(root, id), shaFile)), remote.Quote(sha))
	return remote.Script(script)
}

// SealCommand records the verified sha256 of a staged release; ProbeCommand trusts only
// releases sealed this way.
func SealCommand(root, id, sha string) remote.Command {
	return remote.Script("set -e\n" + sealLines(root, id, sha))
}

// sealLines write the seal file of release id: FetchCommand ends with them too, so both
// staging paths seal a release the same way. The seal is written in place, not renamed
// into place (a process fewer on every host): a seal cut short reads as a different sha256,
// so ProbeCommand calls the release absent and it is staged again.
func sealLines(root, id, sha string) string {
	return fmt.Sprintf(`printf '%%s\n' %s > %s`, remote.Quote(sha), remote.Quote(path.Join(ReleaseDir(root, id), shaFile)))
}

// flipLines points current at release $target atomically: a new symlink under a temporary
// name, then rename(2) over current (mv -T), so current is always either the old or the new
// release.
const flipLines = `ln -sfn -- "$root/releases/$target" "$root/.current.tmp.$$"
mv -Tf -- "$root/.current.tmp.$$" "$root/current"`

// ActivateCommand makes release id current, pushes it on the host's release history, and
// prints "previous <id>" (the release that was current, empty if none) for the run journal.
// The release must be staged: activation never uploads.
func ActivateCommand(root, id, binary string) remote.Command {
	script := fmt.Sprintf(`set -e
root=%s target=%s bin=%s
[ -x "$root/releases/$target/$bin" ] || { echo "release $target is not staged on this host ($root/releases/$target/$bin missing)" >&2; exit 3; }
[ -d "$root/.instactl" ] || mkdir -p -- "$root/.instactl"
h="$root/.instactl/history"
prev=$(readlink -- "$root/current" 2>/dev/null) || prev=
prev=${prev##*/}
top=
if [ -r "$h" ]; then while IFS= read -r l || [ -n "$l" ]; do top=$l; done < "$h"; fi
if [ -n "$prev" ] && [ "$prev" != "$top" ] && [ "$prev" != "$target" ]; then echo "$prev" >> "$h"; top=$prev; fi
%s
if [ "$top" != "$target" ]; then echo "$target" >> "$h"; fi
echo "previous $prev"`, remote.Quote(root), remote.Quote(id), remote.Quote(binary), flipLines)
	return remote.Script(script)
}

// rollbackTargetLines sets $target, when empty, to the rollback target: the most recent
// release in the history that is not current and is still staged.
const rollbackTargetLines = `cur=$(readlink -- "$root/current" 2>/dev/null) || cur=
cur=${cur##*/}
h="$root/.instactl/history"
if [ -z "$target" ]; then
  for r in $(grep -vxF -e "$cur" -- "$h" 2>/dev/null | tac); do
    if [ -x "$root/releases/$r/$bin" ]; then target=$r; break; fi
  done
fi`

// RollbackCommand makes release id current again (empty id: the previous release, see
// [Releases]) and pops the history back to it, so a second rollback goes one release further
// back. It prints "previous <id>" (the release it replaced) and "current <id>".
func RollbackCommand(root, id, binary string) remote.Command {
	script := fmt.Sprintf(`set -e
root=%s target=%s bin=%s
%s
[ -n "$target" ] || { echo "no previous release to roll back to (history: $(tr '\n' ' ' < "$h" 2>/dev/null))" >&2; exit 3; }
[ -x "$root/releases/$target/$bin" ] || { echo "release $target is not on this host ($root/releases/$target/$bin missing)" >&2; exit 3; }
%s
if grep -qxF -e "$target" -- "$h" 2>/dev/null; then
  awk -v t="$target" '{l[NR]=$0; if ($0 == t) n=NR} END {for (i = 1; i <= n; i++) print l[i]}' "$h" > "$h.tmp"
  mv -f -- "$h.tmp" "$h"
else
  echo "$target" >> "$h"
fi
echo "previous $cur"
echo "current $target"`, remote.Quote(root), remote.Quote(id), remote.Quote(binary), rollbackTargetLines, flipLines)
	return remote.Script(script)
}

// RetractCommand undoes the first activation of release id on a host that had no release
// before: current is removed if it points at id, and id leaves the history (so no later
// rollback picks it). The release stays staged; a later deploy of it uploads nothing. It is
// the rollback of a host that has nothing to roll back to.
func RetractCommand(root, id string) remote.Command {
	return remote.Script(fmt.Sprintf(`set -e
root=%s target=%s
cur=$(readlink -- "$root/current" 2>/dev/null) || cur=
if [ "${cur##*/}" = "$target" ]; then rm -f -- "$root/current"; fi
h="$root/.instactl/history"
if [ -f "$h" ]; then grep -vxF -e "$target" -- "$h" > "$h.tmp" || true; mv -f -- "$h.tmp" "$h"; fi`,
		remote.Quote(root), remote.Quote(id)))
}

// ReleasesCommand lists a host's releases: "current <id>", "previous <id>" (the rollback
// target), then "release <id> <staged-unix-time> <size> <sha256>" per sealed release, newest
// first.
func ReleasesCommand(root, binary string) remote.Command {
	script := fmt.Sprintf(`root=%s target= bin=%s
%s
echo "current $cur"
echo "previous $target"
cd -- "$root/releases" 2>/dev/null || exit 0
for f in $(ls -1t -- */.sha256 2>/dev/null); do
  r=${f%%/.sha256}
  echo "release $r $(stat -c %%Y -- "$f") $(stat -c %%s -- "$r/$bin" 2>/dev/null || echo 0) $(cat -- "$f")"
done`, remote.Quote(root), remote.Quote(binary), rollbackTargetLines)
	return remote.Script(script)
}

// PruneCommand deletes sealed releases beyond the keep newest (by staging time), never the
// current release nor the rollback target, and drops them from the history. It prints
// "pruned <id>" per deleted release.
func PruneCommand(root, binary string, keep int) remote.Command {
	script := fmt.Sprintf(`set -e
root=%s target= bin=%s keep=%d
%s
cd -- "$root/releases" 2>/dev/null || exit 0
n=0
for f in $(ls -1t -- */.sha256 2>/dev/null); do
  r=${f%%/.sha256}
  n=$((n + 1))
  if [ "$n" -le "$keep" ] || [ "$r" = "$cur" ] || [ "$r" = "$target" ]; then continue; fi
  rm -rf -- "$r"
  if [ -f "$h" ]; then grep -vxF -e "$r" -- "$h" > "$h.tmp" || true; mv -f -- "$h.tmp" "$h"; fi
  echo "pruned $r"
done`, remote.Quote(root), remote.Quote(binary), keep, rollbackTargetLines)
	return remote.Script(script)
}

// RestartCommand restarts service through the host's service manager (systemd or the
// sandbox's instactl-svc), as the templates install it.
func RestartCommand(serviceManager, service string) (remote.Command, error) {
	argv := templates.RestartCommand(serviceManager, service)
	if argv == nil {
		return nil, fmt.Errorf("unknown service manager %q (want %q or %q)", serviceManager,
			templates.ServiceManagerSystemd, templates.ServiceManagerSandbox)
	}
	return remote.Command(argv), nil
}

// MarkerPath is the per-host marker of run runID.
func MarkerPath(root, runID string) string { return path.Join(root, stateDir, "runs", runID) }

// MarkCommand records on the host that run runID finished there with release id.
func MarkCommand(root, runID, id string) remote.Command {
	p := MarkerPath(root, runID)
	return remote.Script(fmt.Sprintf(`set -e
[ -d %s ] || mkdir -p -- %s
printf 'activated %%s\n' %s > %s
mv -f -- %s %s`, remote.Quote(path.Dir(p)), remote.Quote(path.Dir(p)), remote.Quote(id), remote.Quote(p+".tmp"),
		remote.Quote(p+".tmp"), remote.Quote(p)))
}

// ReadMarkCommand prints the marker of run runID and the current release: "marker activated
// <id>" (or "marker "), then "current <id>".
func ReadMarkCommand(root, runID string) remote.Command {
	return remote.Script(fmt.Sprintf(`echo "marker $(cat -- %s 2>/dev/null)"
cur=$(readlink -- %s 2>/dev/null) || cur=
echo "current ${cur##*/}"`, remote.Quote(MarkerPath(root, runID)), remote.Quote(path.Join(root, "current"))))
}

// AppendCommand appends its stdin to file, creating the directory: the host's audit log.
func AppendCommand(file string) remote.Command {
	return remote.Script(fmt.Sprintf(`set -e
[ -d %s ] || mkdir -p -- %s
cat >> %s`, remote.Quote(path.Dir(file)), remote.Quote(path.Dir(file)), remote.Quote(file)))
}

// LockDir is the lock directory under root.
func LockDir(root string) string { return path.Join(root, stateDir, "lock") }

// LockCommand takes the lock with mkdir(2), which is atomic, then writes info (JSON) beside
// it. It prints "acquired", or "held" followed by the holder's info.json.
func LockCommand(root string, info []byte) remote.Command {
	dir := LockDir(root)
	return remote.Script(fmt.Sprintf(`set -e
dir=%s
mkdir -p -- "${dir%%/*}"
if mkdir -- "$dir" 2>/dev/null; then
  printf '%%s\n' %s > "$dir/info.json.tmp"
  mv -f -- "$dir/info.json.tmp" "$dir/info.json"
  echo acquired
else
  echo held
  cat -- "$dir/info.json" 2>/dev/null || true
fi`, remote.Quote(dir), remote.Quote(string(info))))
}

// LockRewriteCommand replaces the holder's info of a held lock (a resumed run taking its own
// lock over).
func LockRewriteCommand(root string, info []byte) remote.Command {
	return remote.Script(fmt.Sprintf(`set -e
dir=%s
printf '%%s\n' %s > "$dir/info.json.tmp"
mv -f -- "$dir/info.json.tmp" "$dir/info.json"`, remote.Quote(LockDir(root)), remote.Quote(string(info))))
}

// LockStatusCommand prints "held" and the info, or "free".
func LockStatusCommand(root string) remote.Command {
	return remote.Script(fmt.Sprintf(`dir=%s
if [ -d "$dir" ]; then echo held; cat -- "$dir/info.json" 2>/dev/null || true; else echo free; fi`,
		remote.Quote(LockDir(root))))
}

// UnlockCommand removes the lock if run runID holds it (any holder when runID is empty: a
// forced release). It prints "released", "free", or "held" and the holder's info.
func UnlockCommand(root, runID string) remote.Command {
	return remote.Script(fmt.Sprintf(`dir=%s run=%s
[ -d "$dir" ] || { echo free; exit 0; }
if [ -z "$run" ] || grep -qF -e "\"run_id\":\"$run\"" -- "$dir/info.json" 2>/dev/null; then
  rm -rf -- "$dir"
  echo released
else
  echo held
  cat -- "$dir/info.json" 2>/dev/null || true
fi`, remote.Quote(LockDir(root)), remote.Quote(runID)))
}
