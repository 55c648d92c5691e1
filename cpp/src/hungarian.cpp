#include "deformdetr/parallel.h"
