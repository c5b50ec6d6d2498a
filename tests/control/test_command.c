/* The command grammar: every valid form, every error with its exact reason,
 * the range boundaries, and format → parse round trips. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine/protocol/command.h"

#include "tests/expect.h"

static const command_limits limits = {.layers = 4, .experts = 8, .ranks = 3};

#define COMMANDS "(commands: pause, resume, stop, checkpoint, status, " \
                 "lr VALUE, move L.E R, plan, apply, policy " \
                 "off|suggest|auto [every N] [min-gain X], split L.E R[:W] ..., shares W0 W1 ...)"
#define POLICY_USAGE "(usage: policy off|suggest|auto [every N] [min-gain X])"

static void expect_valid(const char *line, command want)
{
    command got;
    char reason[256] = "";
    memset(&got, 0xab, sizeof got);
    if (command_parse(line, &limits, &got, reason, sizeof reason) < 0) {
        failures++;
        printf("FAIL: \"%s\" rejected: %s\n", line, reason);
        return;
    }
    EXPECT(got.kind == want.kind, "\"%s\": kind %d, want %d", line,
           (int)got.kind, (int)want.kind);
    if (want.kind == COMMAND_LR)
        EXPECT(got.value == want.value, "\"%s\": value %.17g, want %.17g",
               line, got.value, want.value);
    if (want.kind == COMMAND_POLICY)
        EXPECT(got.policy == want.policy && got.every == want.every &&
                   got.min_gain == want.min_gain,
               "\"%s\": policy %d every %d min-gain %g, want %d %d %g", line,
               got.policy, got.every, got.min_gain, want.policy, want.every,
               want.min_gain);
    if (want.kind == COMMAND_MOVE)
        EXPECT(got.layer == want.layer && got.expert == want.expert &&
                   got.rank == want.rank,
               "\"%s\": move %d.%d %d, want %d.%d %d", line, got.layer,
               got.expert, got.rank, want.layer, want.expert, want.rank);
}

/* "shares ..." parses to these three weights and formats back the same. */
static void expect_shares(const char *line, const int *weights)
{
    command got;
    char reason[256] = "", back[256];
    if (command_parse(line, &limits, &got, reason, sizeof reason) < 0) {
        failures++;
        printf("FAIL: \"%s\" rejected: %s\n", line, reason);
        return;
    }
    EXPECT(got.kind == COMMAND_SHARES && got.share_count == 3 &&
               memcmp(got.share_weight, weights, 3 * sizeof *weights) == 0,
           "\"%s\": kind %d, %d weights", line, (int)got.kind,
           got.share_count);
    command_format(&got, back, sizeof back);
    EXPECT(strcmp(back, line) == 0, "\"%s\" formats as \"%s\"", line, back);
}

static void expect_error(const char *line, const char *want)
{
    command got = {.kind = COMMAND_STATUS};
    command before = got;
    char reason[256] = "";
    int rc = command_parse(line, &limits, &got, reason, sizeof reason);
    EXPECT(rc == -1, "\"%s\" accepted, want error: %s", line, want);
    EXPECT(strcmp(reason, want) == 0, "\"%s\":\n  got  %s\n  want %s", line,
           reason, want);
    EXPECT(memcmp(&got, &before, sizeof got) == 0,
           "\"%s\": the output changed on error", line);
}

static void test_valid(void)
{
    expect_valid("pause", (command){.kind = COMMAND_PAUSE});
    expect_valid("resume", (command){.kind = COMMAND_RESUME});
    expect_valid("stop", (command){.kind = COMMAND_STOP});
    expect_valid("checkpoint", (command){.kind = COMMAND_CHECKPOINT});
    expect_valid("status", (command){.kind = COMMAND_STATUS});
    expect_valid("  \tpause \r\n", (command){.kind = COMMAND_PAUSE});
    expect_valid("lr 3e-4", (command){.kind = COMMAND_LR, .value = 3e-4});
    expect_valid("lr 0.001", (command){.kind = COMMAND_LR, .value = 0.001});
    expect_valid("lr 1", (command){.kind = COMMAND_LR, .value = 1});
    expect_valid("lr    .5  ", (command){.kind = COMMAND_LR, .value = 0.5});
    expect_valid("lr 1e-30", (command){.kind = COMMAND_LR, .value = 1e-30});
    expect_valid("move 2.5 1",
                 (command){.kind = COMMAND_MOVE, .layer = 2, .expert = 5,
                           .rank = 1});
    expect_valid("move\t0.0\t0",
                 (command){.kind = COMMAND_MOVE, .layer = 0, .expert = 0,
                           .rank = 0});
    expect_valid("move 3.7 2", /* n - 1 for each limit */
                 (command){.kind = COMMAND_MOVE, .layer = 3, .expert = 7,
                           .rank = 2});
    expect_valid("plan", (command){.kind = COMMAND_PLAN});
    expect_valid("apply", (command){.kind = COMMAND_APPLY});
    expect_valid("policy off",
                 (command){.kind = COMMAND_POLICY,
                           .policy = CONFIG_POLICY_OFF, .min_gain = -1});
    expect_valid("policy suggest every 10",
                 (command){.kind = COMMAND_POLICY,
                           .policy = CONFIG_POLICY_SUGGEST, .every = 10,
                           .min_gain = -1});
    expect_valid("policy auto every 20 min-gain 0.05",
                 (command){.kind = COMMAND_POLICY, .policy = CONFIG_POLICY_AUTO,
                           .every = 20, .min_gain = 0.05});
    expect_valid("policy auto min-gain 5% every 1",
                 (command){.kind = COMMAND_POLICY, .policy = CONFIG_POLICY_AUTO,
                           .every = 1, .min_gain = 0.05});
    expect_valid("policy auto min-gain 0",
                 (command){.kind = COMMAND_POLICY, .policy = CONFIG_POLICY_AUTO,
                           .min_gain = 0});
    expect_valid("move 03.007 002",
                 (command){.kind = COMMAND_MOVE, .layer = 3, .expert = 7,
                           .rank = 2});
}

/* split: ranks and weights in the order given; the first is the
 * expert's rank. */
static void expect_split(const char *line, int layer, int expert, int n,
                         const int *ranks, const int *weights)
{
    command got;
    char reason[256] = "";
    int rc = command_parse(line, &limits, &got, reason, sizeof reason);
    EXPECT(rc == 0, "\"%s\" rejected: %s", line, reason);
    if (rc != 0)
        return;
    EXPECT(got.kind == COMMAND_SPLIT && got.layer == layer &&
               got.expert == expert && got.split_count == n &&
               got.rank == ranks[0],
           "\"%s\": kind %d %d.%d, %d ranks, rank %d", line, (int)got.kind,
           got.layer, got.expert, got.split_count, got.rank);
    for (int i = 0; i < n && i < got.split_count; i++)
        EXPECT(got.split_rank[i] == ranks[i] &&
                   got.split_weight[i] == weights[i],
               "\"%s\": part %d is %d:%d, want %d:%d", line, i,
               got.split_rank[i], got.split_weight[i], ranks[i], weights[i]);
    char text[128];
    command_format(&got, text, sizeof text);
    command again;
    EXPECT(command_parse(text, &limits, &again, reason, sizeof reason) == 0 &&
               memcmp(again.split_rank, got.split_rank,
                      sizeof got.split_rank) == 0 &&
               memcmp(again.split_weight, got.split_weight,
                      sizeof got.split_weight) == 0,
           "\"%s\" formats as \"%s\", which does not parse back", line,
           text);
}

static void test_split(void)
{
    expect_split("split 1.2 0 2", 1, 2, 2, (int[]){0, 2}, (int[]){1, 1});
    expect_split("split 3.7 2:3 0:1 1:1000", 3, 7, 3, (int[]){2, 0, 1},
                 (int[]){3, 1, 1000});
    expect_split("split 0.0 1", 0, 0, 1, (int[]){1}, (int[]){1});
    expect_shares("shares 3 1 1000", (int[]){3, 1, 1000});
    expect_error("shares 3 1", "shares: the job has 3 rank(s), one weight "
                               "each; got 2");
    expect_error("shares 3 0 1", "shares: expected an integer weight "
                                 "1..1000 a rank, got \"0\"");
    expect_error("shares 3 x 1", "shares: expected an integer weight "
                                 "1..1000 a rank, got \"x\"");
    expect_error("split 0.0", "split: missing R[:W] ... (usage: split L.E "
                              "R[:W] ...)");
    expect_error("split 0.9 1", "split: expert 9 is out of range (0..7)");
    expect_error("split 0 1", "split: expected L.E, got \"0\"");
    expect_error("split 0.1 3", "split: rank 3 is out of range (0..2)");
    expect_error("split 0.1 1:0", "split: weight in \"1:0\" is out of range "
                                  "(1..1000)");
    expect_error("split 0.1 1:2000", "split: weight in \"1:2000\" is out of "
                                     "range (1..1000)");
    expect_error("split 0.1 1:x", "split: expected R or R:W (a rank and an "
                                  "integer weight), got \"1:x\"");
    expect_error("split 0.1 1: 2", "split: expected R or R:W (a rank and an "
                                   "integer weight), got \"1:\"");
    expect_error("split 0.1 1 2 1", "split: rank 1 is named twice");
}

static void test_errors(void)
{
    expect_error("", "empty command");
    expect_error(" \t\r\n", "empty command");
    expect_error("paws", "unknown command \"paws\" " COMMANDS);
    expect_error("PAUSE", "unknown command \"PAUSE\" " COMMANDS);
    expect_error("Lr 0.1", "unknown command \"Lr\" " COMMANDS);
    expect_error("pause!", "unknown command \"pause!\" " COMMANDS);
    expect_error("\x01\xff", "unknown command \"??\" " COMMANDS);
    expect_error("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                 "unknown command \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                 "...\" " COMMANDS);

    expect_error("pause now", "pause: unexpected argument \"now\" (usage: pause)");
    expect_error("resume 1", "resume: unexpected argument \"1\" (usage: resume)");
    expect_error("stop x y", "stop: unexpected argument \"x\" (usage: stop)");
    expect_error("checkpoint a",
                 "checkpoint: unexpected argument \"a\" (usage: checkpoint)");
    expect_error("status all",
                 "status: unexpected argument \"all\" (usage: status)");

    expect_error("lr", "lr: missing VALUE (usage: lr VALUE)");
    expect_error("lr 0.1 0.2",
                 "lr: unexpected argument \"0.2\" (usage: lr VALUE)");
    expect_error("lr fast", "lr: expected a number, got \"fast\"");
    expect_error("lr 1e-3x", "lr: expected a number, got \"1e-3x\"");
    expect_error("lr 0,001", "lr: expected a number, got \"0,001\"");
    expect_error("lr 0", "lr: 0 is out of range (0 < VALUE <= 1)");
    expect_error("lr -0", "lr: -0 is out of range (0 < VALUE <= 1)");
    expect_error("lr -1e-4", "lr: -1e-4 is out of range (0 < VALUE <= 1)");
    expect_error("lr 1.0000001",
                 "lr: 1.0000001 is out of range (0 < VALUE <= 1)");
    expect_error("lr 1e999", "lr: 1e999 is out of range (0 < VALUE <= 1)");
    expect_error("lr 1e-999", "lr: 1e-999 is out of range (0 < VALUE <= 1)");
    expect_error("lr inf", "lr: inf is out of range (0 < VALUE <= 1)");
    expect_error("lr nan", "lr: nan is out of range (0 < VALUE <= 1)");

    expect_error("plan now", "plan: unexpected argument \"now\" (usage: plan)");
    expect_error("apply 1", "apply: unexpected argument \"1\" (usage: apply)");
    expect_error("policy", "policy: missing off|suggest|auto [every N] "
                           "[min-gain X] " POLICY_USAGE);
    expect_error("policy sometimes", "policy: expected off, suggest or auto, "
                                     "got \"sometimes\"");
    expect_error("policy auto every", "policy: every needs a value " POLICY_USAGE);
    expect_error("policy auto min-gain",
                 "policy: min-gain needs a value " POLICY_USAGE);
    expect_error("policy auto often 3",
                 "policy: expected \"every N\" or \"min-gain X\", got "
                 "\"often\"");
    expect_error("policy auto every 0",
                 "policy: every expects a step count (1..1000000000), got "
                 "\"0\"");
    expect_error("policy auto every 2.5",
                 "policy: every expects a step count (1..1000000000), got "
                 "\"2.5\"");
    expect_error("policy auto min-gain 1",
                 "policy: min-gain expects a fraction of a step, 0 <= X < 1 "
                 "(like 0.05 or 5%), got \"1\"");
    expect_error("policy auto min-gain -0.1",
                 "policy: min-gain expects a fraction of a step, 0 <= X < 1 "
                 "(like 0.05 or 5%), got \"-0.1\"");
    expect_error("policy auto min-gain 5%%",
                 "policy: min-gain expects a fraction of a step, 0 <= X < 1 "
                 "(like 0.05 or 5%), got \"5%%\"");
    expect_error("policy auto every 5 min-gain 0.1 x",
                 "policy: unexpected argument \"x\" " POLICY_USAGE);

    expect_error("move", "move: missing L.E R (usage: move L.E R)");
    expect_error("move 2.5", "move: missing R (usage: move L.E R)");
    expect_error("move 2.5 1 0",
                 "move: unexpected argument \"0\" (usage: move L.E R)");
    expect_error("move 2,5 1", "move: expected L.E, got \"2,5\"");
    expect_error("move 2 1", "move: expected L.E, got \"2\"");
    expect_error("move 2. 1", "move: expected L.E, got \"2.\"");
    expect_error("move .5 1", "move: expected L.E, got \".5\"");
    expect_error("move 2.5.1 1", "move: expected L.E, got \"2.5.1\"");
    expect_error("move +2.5 1", "move: expected L.E, got \"+2.5\"");
    expect_error("move 2.+5 1", "move: expected L.E, got \"2.+5\"");
    expect_error("move a.b 1", "move: expected L.E, got \"a.b\"");
    expect_error("move 2.5 x",
                 "move: expected a rank R (an integer), got \"x\"");
    expect_error("move 2.5 1.0",
                 "move: expected a rank R (an integer), got \"1.0\"");
    expect_error("move 2.5 -",
                 "move: expected a rank R (an integer), got \"-\"");

    /* Boundaries: n is out, and so is -1. */
    expect_error("move 4.0 0", "move: layer 4 is out of range (0..3)");
    expect_error("move 9.0 0", "move: layer 9 is out of range (0..3)");
    expect_error("move -1.0 0", "move: layer -1 is out of range (0..3)");
    expect_error("move 0.8 0", "move: expert 8 is out of range (0..7)");
    expect_error("move 0.-1 0", "move: expert -1 is out of range (0..7)");
    expect_error("move 0.0 3", "move: rank 3 is out of range (0..2)");
    expect_error("move 0.0 -1", "move: rank -1 is out of range (0..2)");
    expect_error("move 99999999999999999999999.0 0",
                 "move: layer 99999999999999999999999 is out of range (0..3)");
    expect_error("move 0.0 4294967296",
                 "move: rank 4294967296 is out of range (0..2)");

    /* Limits of zero: nothing is in range. */
    const command_limits none = {0, 0, 0};
    command got;
    char reason[256] = "";
    EXPECT(command_parse("move 0.0 0", &none, &got, reason, sizeof reason) < 0 &&
               strcmp(reason, "move: layer 0 is out of range (there are no "
                              "layers)") == 0,
           "zero layers: %s", reason);

    /* A short reason buffer is cut, still terminated; NULL is allowed. */
    char small[8];
    EXPECT(command_parse("paws", &limits, &got, small, sizeof small) < 0 &&
               strcmp(small, "unknown") == 0,
           "short reason buffer: \"%s\"", small);
    EXPECT(command_parse("paws", &limits, &got, NULL, 0) < 0,
           "NULL reason buffer");
}

static void test_format(void)
{
    const command cases[] = {
        {.kind = COMMAND_PAUSE},
        {.kind = COMMAND_RESUME},
        {.kind = COMMAND_STOP},
        {.kind = COMMAND_CHECKPOINT},
        {.kind = COMMAND_STATUS},
        {.kind = COMMAND_LR, .value = 3e-4},
        {.kind = COMMAND_LR, .value = 1},
        {.kind = COMMAND_LR, .value = 0.000123456},
        {.kind = COMMAND_LR, .value = 1.5e-7},
        {.kind = COMMAND_MOVE, .layer = 2, .expert = 5, .rank = 1},
        {.kind = COMMAND_MOVE, .layer = 3, .expert = 7, .rank = 2},
        {.kind = COMMAND_PLAN},
        {.kind = COMMAND_APPLY},
        {.kind = COMMAND_POLICY, .policy = CONFIG_POLICY_OFF, .min_gain = -1},
        {.kind = COMMAND_POLICY, .policy = CONFIG_POLICY_AUTO, .every = 20,
         .min_gain = 0.05},
    };
    const char *text[] = {"pause", "resume", "stop", "checkpoint", "status",
                          "lr 0.0003", "lr 1", "lr 0.000123456", "lr 1.5e-07",
                          "move 2.5 1", "move 3.7 2", "plan", "apply",
                          "policy off", "policy auto every 20 min-gain 0.05"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char line[64];
        command_format(&cases[i], line, sizeof line);
        EXPECT(strcmp(line, text[i]) == 0, "format: \"%s\", want \"%s\"", line,
               text[i]);
        command back;
        char reason[256] = "";
        int rc = command_parse(line, &limits, &back, reason, sizeof reason);
        EXPECT(rc == 0, "\"%s\" does not parse back: %s", line, reason);
        if (rc == 0) {
            char again[64];
            command_format(&back, again, sizeof again);
            EXPECT(back.kind == cases[i].kind && strcmp(again, line) == 0,
                   "round trip of \"%s\" gave \"%s\"", line, again);
            if (cases[i].kind == COMMAND_LR)
                EXPECT(back.value == cases[i].value, "lr %.17g came back %.17g",
                       cases[i].value, back.value);
        }
    }
    char tiny[5];
    command_format(&cases[9], tiny, sizeof tiny);
    EXPECT(strcmp(tiny, "move") == 0, "short format buffer: \"%s\"", tiny);
}

/* Found by tests/fuzz: shares with 64 weights (and 65) overran the word
 * array; min-gain 0.9999999 formatted as a refused 1; the longest
 * commands fit COMMAND_TEXT_MAX, which replies and events use. */
static void test_fuzz_findings(void)
{
    command_limits many = {.layers = 4, .experts = 8, .ranks = 64};
    char line[COMMAND_TEXT_MAX * 2] = "shares", reason[256] = "";
    for (int r = 0; r < 64; r++)
        strcat(line, " 1000");
    command c;
    EXPECT(command_parse(line, &many, &c, reason, sizeof reason) == 0 &&
               c.share_count == 64,
           "64 weights: %s", reason);
    char text[COMMAND_TEXT_MAX];
    command_format(&c, text, sizeof text);
    EXPECT(strcmp(text, line) == 0, "64 weights format whole: %s", text);
    strcat(line, " 1000");
    EXPECT(command_parse(line, &many, &c, reason, sizeof reason) < 0 &&
               strstr(reason, "unexpected argument \"1000\"") != NULL,
           "65 weights: %s", reason);
    const char *gain = "policy auto every 20 min-gain 0.9999999";
    EXPECT(command_parse(gain, &many, &c, reason, sizeof reason) == 0,
           "%s: %s", gain, reason);
    command_format(&c, text, sizeof text);
    EXPECT(strcmp(text, gain) == 0, "min-gain formats as \"%s\"", text);
}

int main(void)
{
    test_valid();
    test_errors();
    test_split();
    test_format();
    test_fuzz_findings();
    if (failures) {
        printf("%d failure(s)\n", failures);
        return 1;
    }
    printf("command: all passed\n");
    return 0;
}
