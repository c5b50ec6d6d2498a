/* `moectl demo`: a guided story told on a live job. The demo starts a job
 * on configs/demo.yaml (a mixed cluster with one emulated slow rank),
 * listens to the records it publishes over the control socket, sends the
 * commands an operator would (move, plan, apply, policy auto) and narrates
 * what they changed. Every figure narrated is measured in that run: a
 * median over a stated range of steps, so that the metrics file can
 * recompute it. The console shows the story in a narration pane; with
 * --headless it is printed as plain text. */
#ifndef MOECTL_TUI_DEMO_H
#define MOECTL_TUI_DEMO_H

/* argv[0..argc) are the words after "demo". Returns an exit status: 0 the
 * story ran to its end (or the operator left), 1 the job failed, 2 bad
 * usage or configuration. */
int demo_main(int argc, char **argv);

#endif
