// The phase bar's model (queued → fetching → building → pushing → done), kept free of the DOM so
// the tests can check it in Node.

import type { Build, BuildState } from "./types";

export const PHASES = ["queued", "fetching", "building", "pushing", "done"] as const;
export type Phase = (typeof PHASES)[number];
export type StepStatus = "complete" | "active" | "pending" | "failed" | "cancelled" | "skipped";

/** the index in PHASES a build state or log phase stands for (-1: not a step, e.g. "failed") */
export function phaseIndex(state: string): number {
  if (state === "built" || state === "failed" || state === "cancelled") return PHASES.length - 1;
  return PHASES.indexOf(state as Phase);
}

/**
 * The status of every step. ``reached`` is the index of the furthest working phase seen (from
 * states and log lines): it tells where a failed or cancelled build stopped.
 */
export function phaseSteps(
  build: Pick<Build, "state" | "push" | "push_error">,
  reached: number,
): StepStatus[] {
  const last = PHASES.length - 1;
  const ended: BuildState[] = ["failed", "cancelled"];
  return PHASES.map((phase, i) => {
    if (phase === "pushing" && !build.push) return "skipped";
    if (build.state === "built") {
      return phase === "pushing" && build.push_error ? "failed" : "complete";
    }
    if (ended.includes(build.state)) {
      const status: StepStatus = build.state === "failed" ? "failed" : "cancelled";
      if (i === last) return status;
      if (i < reached) return "complete";
      return i === reached ? status : "pending";
    }
    const current = phaseIndex(build.state);
    if (i < current) return "complete";
    return i === current ? "active" : "pending";
  });
}

/**
 * Whether the line leading into each step is drawn as done: the last step before it that ran
 * (skipped steps do not count) is complete, and this step itself was reached.
 */
export function phaseLines(steps: StepStatus[]): boolean[] {
  return steps.map((status, i) => {
    if (i === 0 || status === "pending" || status === "skipped") return false;
    const before = steps.slice(0, i).filter((s) => s !== "skipped");
    return before[before.length - 1] === "complete";
  });
}
