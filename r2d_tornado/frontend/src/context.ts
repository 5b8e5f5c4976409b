// What every view gets: configuration, the API client, service info, and a scope that ends when
// the user navigates away (timers, EventSources and late answers must not outlive their view).

import type { Api } from "./api";
import type { PageConfig } from "./config";
import type { ServiceInfo } from "./types";
import type { Route } from "./util";

export class Scope {
  alive = true;
  private cleanups: (() => void)[] = [];

  defer(fn: () => void): void {
    if (this.alive) this.cleanups.push(fn);
    else fn();
  }

  close(): void {
    this.alive = false;
    for (const fn of this.cleanups.splice(0).reverse()) {
      try {
        fn();
      } catch (err) {
        console.error(err);
      }
    }
  }
}

export interface Ctx {
  config: PageConfig;
  api: Api;
  info: ServiceInfo;
}

export type View = (ctx: Ctx, route: Route, el: HTMLElement, scope: Scope) => void | Promise<void>;
