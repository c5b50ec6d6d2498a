/* The check macro the C tests share: a failed check is counted and
 * reported with its place, and the test goes on to report the rest. */
#ifndef MOECTL_TESTS_EXPECT_H
#define MOECTL_TESTS_EXPECT_H

#include <stdio.h>

static int failures;

#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        if (!(cond)) {                                                         \
            failures++;                                                        \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                        \
            printf(__VA_ARGS__);                                               \
            printf("\n");                                                      \
        }                                                                      \
    } while (0)

/* A check whose message is the condition itself. */
#define EXPECT_THAT(cond) EXPECT(cond, "expected %s", #cond)

#endif
