/* The floor: the least a clock can do. Sleeps to each target second with an absolute-time sleep and
 * spawns the probe COUNT times with posix_spawn (vfork-based in glibc), reaping between fires.
 * usage: floor PROBE OUTFILE FIRST_EPOCH_S FIRES COUNT [STEP_S] */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: floor PROBE OUTFILE FIRST_EPOCH_S FIRES COUNT [STEP_S]\n");
        return 2;
    }
    long step = argc == 7 ? atol(argv[6]) : 1;
    char *args[] = {argv[1], argv[2], NULL};
    long first = atol(argv[3]), fires = atol(argv[4]), count = atol(argv[5]);
    for (long k = 0; k < fires; k++) {
        struct timespec at = {.tv_sec = first + k * step, .tv_nsec = 0};
        while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &at, NULL) != 0) {
        }
        for (long i = 0; i < count; i++) {
            pid_t pid;
            if (posix_spawn(&pid, argv[1], NULL, NULL, args, environ) != 0) return 1;
        }
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
    }
    while (wait(NULL) > 0) {
    }
    return 0;
}
