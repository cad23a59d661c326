#include "normax.h"

#include "platform.h"

static int nmx_user_threads = 0; /* 0: follow OpenMP's ICV */
static volatile int nmx_forked_child = 0;
#if NMX_HAVE_POSIX
static pthread_once_t nmx_atfork_once = PTHREAD_ONCE_INIT;
static void nmx_mark_child(void) { nmx_forked_child = 1; }
static void nmx_register_atfork(void) { pthread_atfork(NULL, NULL, nmx_mark_child); }
#define NMX_ONCE_ATFORK() pthread_once(&nmx_atfork_once, nmx_register_atfork)
#else /* no fork() on this system */
#define NMX_ONCE_ATFORK() ((void)0)
#endif

void nmx_set_num_threads(int n) {
    NMX_ONCE_ATFORK();
    nmx_user_threads = n > 0 ? n : 0;
}

int nmx_get_num_threads(void) {
    NMX_ONCE_ATFORK();
    if (nmx_forked_child) return 1;
    return nmx_user_threads > 0 ? nmx_user_threads : omp_get_max_threads();
}

int nmx_threads_for(nmx_index work) {
    if (work < NMX_PARALLEL_MIN_WORK) return 1;
    return nmx_get_num_threads();
}
