// xterm.js, loaded on demand by the log view only (it is most of the bundle's weight).

import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";

export interface LogTerminal {
  write(text: string): void;
  dispose(): void;
}

export function createTerminal(container: HTMLElement): LogTerminal {
  const term = new Terminal({
    disableStdin: true,
    convertEol: false, // the caller turns "\n" into "\r\n" itself (see util.terminalLine)
    cursorBlink: false,
    cursorInactiveStyle: "none",
    scrollback: 100_000,
    fontSize: 13,
    lineHeight: 1.15,
    fontFamily: 'SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", "Liberation Mono", monospace',
    theme: {
      background: "#1b1f24",
      foreground: "#e6edf3",
      cursor: "#1b1f24",
      selectionBackground: "#3b5070",
    },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(container);
  term.write("\x1b[?25l"); // a log has no cursor
  const refit = () => {
    try {
      fit.fit();
    } catch {
      // the container is not laid out (e.g. hidden): the next resize fits it
    }
  };
  refit();
  const observer = new ResizeObserver(refit);
  observer.observe(container);
  return {
    write: (text) => term.write(text),
    dispose: () => {
      observer.disconnect();
      term.dispose();
    },
  };
}
