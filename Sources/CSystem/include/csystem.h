// System calls and flags Swift cannot see directly (O_DIRECT, posix_fallocate ...).
#pragma once
#include <stddef.h>
