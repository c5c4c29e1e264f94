/* The probe: appends its own start time (CLOCK_REALTIME, ns) to the file named by argv[1].
 * Measured from outside the scheduler: "scheduled instant -> task process running". */
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (argc < 2) return 2;
    char line[32];
    int n = snprintf(line, sizeof line, "%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) return 1;
    ssize_t written = write(fd, line, (size_t)n); /* O_APPEND: one small write is atomic */
    close(fd);
    return written == n ? 0 : 1;
}
