/* Number types of the generated plan code (compiler/ccode.py), each with the same operations:
 *   v_*   double                     values
 *   d1_*  D1 = (v, d[NZ])            value and gradient w.r.t. z = (x, u): forward mode
 *   d2_*  D2 = (v, d[NZ], h[NZ*NZ])  value, gradient and Hessian: second-order forward mode
 * For a unary g:  d(g(a)) = g'(a) da,  h(g(a)) = g'(a) ha + g''(a) da da'.
 * NZ (the number of differentiation directions) is defined before this file is included. */
#include <math.h>
#include <string.h>

typedef double V;
typedef struct { double v; double d[NZ]; } D1;
typedef struct { double v; double d[NZ]; double h[NZ * NZ]; } D2;

/* ------------------------------------------------------------------ scalar rules */
static inline double sigmoid_(double a) { return 1.0 / (1.0 + exp(-a)); }
static inline double softplus_(double a) { return a > 0 ? a + log1p(exp(-a)) : log1p(exp(a)); }
static inline double wrap_(double a) {
    double r = fmod(a + M_PI, 2 * M_PI);
    if (r < 0) r += 2 * M_PI;
    return r - M_PI;
}
static inline double mod_(double a, double b) { return a - b * floor(a / b); }
static inline double sign_(double a) { return (a > 0) - (a < 0); }

/* the row of a stage table of `rows` rows at the clock (an integer-valued state) */
static inline long pl_row(double clock, long rows) {
    long r = lround(clock);
    return r < 0 ? 0 : (r >= rows ? rows - 1 : r);
}

/* g(a), g'(a), g''(a) of every unary builtin */
#define UNARY_RULES(X) \
    X(sin, sin(a), cos(a), -sin(a)) \
    X(cos, cos(a), -sin(a), -cos(a)) \
    X(tan, tan(a), 1.0 / (cos(a) * cos(a)), 2.0 * tan(a) / (cos(a) * cos(a))) \
    X(exp, exp(a), exp(a), exp(a)) \
    X(log, log(a), 1.0 / a, -1.0 / (a * a)) \
    X(sqrt, sqrt(a), 0.5 / sqrt(a), -0.25 / (a * sqrt(a))) \
    X(tanh, tanh(a), 1.0 - tanh(a) * tanh(a), -2.0 * tanh(a) * (1.0 - tanh(a) * tanh(a))) \
    X(sigmoid, sigmoid_(a), sigmoid_(a) * (1.0 - sigmoid_(a)), \
      sigmoid_(a) * (1.0 - sigmoid_(a)) * (1.0 - 2.0 * sigmoid_(a))) \
    X(softplus, softplus_(a), sigmoid_(a), sigmoid_(a) * (1.0 - sigmoid_(a))) \
    X(abs, fabs(a), sign_(a), 0.0) \
    X(relu, (a > 0 ? a : 0.0), (a > 0 ? 1.0 : 0.0), 0.0) \
    X(wrap, wrap_(a), 1.0, 0.0)

/* ------------------------------------------------------------------ double */
static inline V v_c(double a) { return a; }
static inline double v_val(V a) { return a; }
static inline V v_add(V a, V b) { return a + b; }
static inline V v_sub(V a, V b) { return a - b; }
static inline V v_mul(V a, V b) { return a * b; }
static inline V v_div(V a, V b) { return a / b; }
static inline V v_neg(V a) { return -a; }
static inline V v_powc(V a, double p) { return pow(a, p); }
static inline V v_atan2(V y, V x) { return atan2(y, x); }
static inline V v_mod(V a, V b) { return mod_(a, b); }
static inline V v_min2(V a, V b) { return a <= b ? a : b; }
static inline V v_max2(V a, V b) { return a >= b ? a : b; }
#define V_UNARY(name, f, df, d2f) static inline V v_##name(V a) { return f; }
UNARY_RULES(V_UNARY)

/* ------------------------------------------------------------------ first order */
static inline D1 d1_c(double a) { D1 r; r.v = a; memset(r.d, 0, sizeof r.d); return r; }
static inline double d1_val(D1 a) { return a.v; }
/* r = value v with gradient ca da + cb db */
static inline D1 d1_lin(double v, double ca, const D1 *a, double cb, const D1 *b) {
    D1 r; r.v = v;
    for (int i = 0; i < NZ; i++) r.d[i] = ca * a->d[i] + cb * b->d[i];
    return r;
}
static inline D1 d1_add(D1 a, D1 b) { return d1_lin(a.v + b.v, 1.0, &a, 1.0, &b); }
static inline D1 d1_sub(D1 a, D1 b) { return d1_lin(a.v - b.v, 1.0, &a, -1.0, &b); }
static inline D1 d1_mul(D1 a, D1 b) { return d1_lin(a.v * b.v, b.v, &a, a.v, &b); }
static inline D1 d1_div(D1 a, D1 b) { double q = a.v / b.v; return d1_lin(q, 1.0 / b.v, &a, -q / b.v, &b); }
static inline D1 d1_neg(D1 a) { return d1_lin(-a.v, -1.0, &a, 0.0, &a); }
static inline D1 d1_unary(D1 a, double f, double df) { return d1_lin(f, df, &a, 0.0, &a); }
static inline D1 d1_powc(D1 a, double p) { return d1_unary(a, pow(a.v, p), p * pow(a.v, p - 1)); }
static inline D1 d1_atan2(D1 y, D1 x) {
    double r2 = x.v * x.v + y.v * y.v;
    return d1_lin(atan2(y.v, x.v), x.v / r2, &y, -y.v / r2, &x);
}
static inline D1 d1_mod(D1 a, D1 b) { return d1_lin(mod_(a.v, b.v), 1.0, &a, -floor(a.v / b.v), &b); }
static inline D1 d1_min2(D1 a, D1 b) { return a.v <= b.v ? a : b; }
static inline D1 d1_max2(D1 a, D1 b) { return a.v >= b.v ? a : b; }
#define D1_UNARY(name, f, df, d2f) \
    static inline D1 d1_##name(D1 x) { double a = x.v; return d1_unary(x, f, df); }
UNARY_RULES(D1_UNARY)

/* ------------------------------------------------------------------ second order */
static inline D2 d2_c(double a) { D2 r; memset(&r, 0, sizeof r); r.v = a; return r; }
static inline double d2_val(D2 a) { return a.v; }
/* g(a, b) with partials ga, gb and second partials gaa, gab, gbb */
static inline D2 d2_binary(const D2 *a, const D2 *b, double f, double ga, double gb,
                           double gaa, double gab, double gbb) {
    D2 r; r.v = f;
    for (int i = 0; i < NZ; i++) r.d[i] = ga * a->d[i] + gb * b->d[i];
    for (int i = 0; i < NZ; i++)
        for (int j = 0; j < NZ; j++)
            r.h[i * NZ + j] = ga * a->h[i * NZ + j] + gb * b->h[i * NZ + j]
                + gaa * a->d[i] * a->d[j] + gbb * b->d[i] * b->d[j]
                + gab * (a->d[i] * b->d[j] + b->d[i] * a->d[j]);
    return r;
}
static inline D2 d2_unary(D2 x, double f, double df, double d2f) {
    D2 r; r.v = f;
    for (int i = 0; i < NZ; i++) r.d[i] = df * x.d[i];
    for (int i = 0; i < NZ; i++)
        for (int j = 0; j < NZ; j++)
            r.h[i * NZ + j] = df * x.h[i * NZ + j] + d2f * x.d[i] * x.d[j];
    return r;
}
static inline D2 d2_add(D2 a, D2 b) {
    for (int i = 0; i < NZ; i++) a.d[i] += b.d[i];
    for (int i = 0; i < NZ * NZ; i++) a.h[i] += b.h[i];
    a.v += b.v; return a;
}
static inline D2 d2_sub(D2 a, D2 b) {
    for (int i = 0; i < NZ; i++) a.d[i] -= b.d[i];
    for (int i = 0; i < NZ * NZ; i++) a.h[i] -= b.h[i];
    a.v -= b.v; return a;
}
static inline D2 d2_neg(D2 a) {
    for (int i = 0; i < NZ; i++) a.d[i] = -a.d[i];
    for (int i = 0; i < NZ * NZ; i++) a.h[i] = -a.h[i];
    a.v = -a.v; return a;
}
static inline D2 d2_mul(D2 a, D2 b) { return d2_binary(&a, &b, a.v * b.v, b.v, a.v, 0.0, 1.0, 0.0); }
static inline D2 d2_div(D2 a, D2 b) {
    double q = a.v / b.v, ib = 1.0 / b.v;     /* g = a/b: g_b = -q/b, g_ab = -1/b^2, g_bb = 2q/b^2 */
    return d2_binary(&a, &b, q, ib, -q * ib, 0.0, -ib * ib, 2.0 * q * ib * ib);
}
static inline D2 d2_powc(D2 a, double p) {
    return d2_unary(a, pow(a.v, p), p * pow(a.v, p - 1), p * (p - 1) * pow(a.v, p - 2));
}
static inline D2 d2_atan2(D2 y, D2 x) {
    double r2 = x.v * x.v + y.v * y.v, r4 = r2 * r2;
    return d2_binary(&y, &x, atan2(y.v, x.v), x.v / r2, -y.v / r2,
                     -2 * x.v * y.v / r4, (y.v * y.v - x.v * x.v) / r4, 2 * x.v * y.v / r4);
}
static inline D2 d2_mod(D2 a, D2 b) {
    return d2_binary(&a, &b, mod_(a.v, b.v), 1.0, -floor(a.v / b.v), 0.0, 0.0, 0.0);
}
static inline D2 d2_min2(D2 a, D2 b) { return a.v <= b.v ? a : b; }
static inline D2 d2_max2(D2 a, D2 b) { return a.v >= b.v ? a : b; }
#define D2_UNARY(name, f, df, d2f) \
    static inline D2 d2_##name(D2 x) { double a = x.v; return d2_unary(x, f, df, d2f); }
UNARY_RULES(D2_UNARY)
