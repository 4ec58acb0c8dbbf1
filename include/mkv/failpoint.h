/* failpoint.h: named crash points for the fault tests (spec/fault/), compiled in only
 * with the CMake option -DMKV_FAILPOINTS=ON. Without it MKV_FAILPOINT(name) is nothing
 * at all: the shipped release binary has no failpoints.
 *
 * With it, the environment variable MKV_FAILPOINT=NAME[:N] (read once, at the first
 * failpoint reached) arms one point: its N-th hit (default 1) writes
 * "failpoint NAME hit N" to stderr and kills the process with SIGKILL, as a power cut
 * or an OOM kill would at that step of the write order. NAME "*" matches every point,
 * so "*:N" crashes at the N-th failpoint of any name (a crash at every step of a
 * workload, CrashMonkey style). MKV_FAILPOINT_LOG=1 reports every hit without
 * crashing, to count a workload's steps. */
#ifndef MKV_FAILPOINT_H
#define MKV_FAILPOINT_H

#ifdef MKV_FAILPOINTS
void mkv_failpoint_hit(const char *name);
#define MKV_FAILPOINT(name) mkv_failpoint_hit(name)
#else
#define MKV_FAILPOINT(name) ((void)0)
#endif

#endif
