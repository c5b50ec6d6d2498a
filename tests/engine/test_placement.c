/* The placement table: round-robin and given ranks, the owns/holds/share
 * queries from each rank's side, versions raised by changes only, shares
 * from weights (rounding and refusal), split counts, unsplit and restore. */
#include <stdio.h>
#include <string.h>

#include "engine/moe/placement.h"

#include "tests/expect.h"

enum { L = 2, E = 5, WORLD = 3 };

static void test_round_robin(void)
{
    moe_error err;
    placement *p;
    EXPECT(placement_create(&p, L, E, WORLD, 1, NULL, &err) == 0, "create");
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            EXPECT(placement_rank_of(p, l, e) == e % WORLD,
                   "expert %d.%d on rank %d", l, e, placement_rank_of(p, l, e));
            EXPECT(placement_owns(p, l, e) == (e % WORLD == 1), "owns %d", e);
            EXPECT(placement_holds(p, l, e) == (e % WORLD == 1), "holds %d", e);
            EXPECT(placement_share(p, l, e, e % WORLD) ==
                       PLACEMENT_SHARE_UNITS, "full share at its rank");
            EXPECT(!placement_is_split(p, l, e), "unsplit at the start");
        }
    EXPECT(p->version == 1, "version %d", p->version);
    placement_destroy(p);
    placement_destroy(NULL);
}

static void test_assign_and_split(void)
{
    moe_error err;
    int given[L * E] = {0, 0, 1, 1, 2, 2, 2, 1, 0, 0};
    placement *p;
    EXPECT(placement_create(&p, L, E, WORLD, 2, given, &err) == 0, "create");
    EXPECT(placement_rank_of(p, 1, 2) == 1, "given rank");
    int share[WORLD];
    int ranks[2] = {0, 2}, weights[2] = {1, 2};
    EXPECT(placement_shares_from_weights(WORLD, 2, ranks, weights, share) == 0,
           "shares");
    /* 4096/3 = 1365 to rank 0 plus the remainder 1; 2730 to rank 2. */
    EXPECT(share[0] == 1366 && share[1] == 0 && share[2] == 2730,
           "shares %d %d %d", share[0], share[1], share[2]);
    EXPECT(placement_assign(p, 0, 1, 0, share) == 1, "a change");
    EXPECT(p->version == 2, "version %d", p->version);
    EXPECT(placement_assign(p, 0, 1, 0, share) == 0, "the same again");
    EXPECT(p->version == 2, "no change keeps the version");
    EXPECT(placement_is_split(p, 0, 1) && placement_holds(p, 0, 1) &&
               !placement_owns(p, 0, 1), "rank 2 holds a replica it does "
                                         "not own");
    EXPECT(placement_split_count(p) == 1, "one split");
    placement_unsplit(p, 0, 1);
    EXPECT(!placement_is_split(p, 0, 1) && !placement_holds(p, 0, 1),
           "unsplit: all rows on rank 0");
    EXPECT(placement_split_count(p) == 0, "none split");

    int tiny[2] = {1, 10000};
    EXPECT(placement_shares_from_weights(WORLD, 2, ranks, tiny, share) < 0,
           "a weight rounding to no rows is refused");

    int restored[L * E] = {2, 2, 2, 2, 2, 1, 1, 1, 1, 1};
    int version = p->version;
    placement_restore(p, restored);
    EXPECT(p->version == version + 1 && placement_rank_of(p, 1, 0) == 1 &&
               placement_owns(p, 0, 3) && placement_split_count(p) == 0,
           "restore takes the ranks, unsplit");
    placement_restore(p, NULL);
    EXPECT(p->version == version + 1 && placement_rank_of(p, 0, 0) == 2,
           "restore without ranks keeps them and the version");
    placement_destroy(p);
}

int main(void)
{
    test_round_robin();
    test_assign_and_split();
    if (failures)
        return 1;
    printf("placement: ok\n");
    return 0;
}
