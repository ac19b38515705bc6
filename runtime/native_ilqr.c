/* Native kernels of control-limited iLQR (runtime/native.py binds them; runtime/ilqr.py is the
 * reference whose steps they implement, element by element, in double precision).
 *
 * Compiled after the plan's generated code, which defines NX, NU, NZ = NX + NU, NP, NC, NE and
 *   step_v / step_d1           x' = phi(x, u; p)              (values / with the Jacobian)
 *   stage_aug_v / stage_aug_d2 l(x, u; p) + the augmented-Lagrangian terms of the NC inequality
 *                              and NE equality rows with the stage's multipliers w (none for
 *                              w = NULL)                      (value / with gradient and Hessian)
 *   final_v / final_d2         l_T(x; p)
 * Arrays are row-major and batch-first: x (B, T+1, NX), u (B, T, NU), p (B, NP),
 * w (B, T, NW) or NULL,
 * F (B, T, NX, NZ), g (B, T, NZ), C (B, T, NZ, NZ), gT (B, NX), CT (B, NX, NX),
 * K (B, T, NU, NX), k (B, T, NU); lo, hi (B, T, NU) or NULL (no control limits). */
#include <stdint.h>

#define PSTRIDE (NP > 0 ? NP : 1)
#define NW (NC + NE + 1)

/* The sizes this library was generated for: NX, NU, NP, NC, NE (checked by runtime/native.py). */
void pl_sizes(long *out) {
    out[0] = NX; out[1] = NU; out[2] = NP; out[3] = NC; out[4] = NE;
}

/* ------------------------------------------------------------------ rollouts and costs */

/* x_{t+1} = phi(x_t, u_t), u_t = clamp(uff_t + alpha k_t + K_t (x_t - xn_t), lo_t, hi_t) (K, k and xn
 * may be NULL); returns J = sum_t l(x_t, u_t) + l_T(x_T). */
static double rollout_one(long T, const double *x0, const double *uff, const double *k, double alpha,
                          const double *K, const double *xn, const double *lo, const double *hi,
                          const double *p, const double *w, double *x, double *u) {
    double J = 0.0;
    memcpy(x, x0, NX * sizeof(double));
    for (long t = 0; t < T; t++) {
        const double *xt = x + t * NX;
        double *ut = u + t * NU;
        for (int i = 0; i < NU; i++) {
            double v = uff[t * NU + i];
            if (k) v += alpha * k[t * NU + i];
            if (K)
                for (int j = 0; j < NX; j++) v += K[(t * NU + i) * NX + j] * (xt[j] - xn[t * NX + j]);
            if (lo) {
                double l = lo[t * NU + i], h = hi[t * NU + i];
                v = v < l ? l : (v > h ? h : v);
            }
            ut[i] = v;
        }
        J += stage_aug_v(xt, ut, p, w ? w + t * NW : NULL);
        step_v(xt, ut, p, x + (t + 1) * NX);
    }
    return J + final_v(x + T * NX, p);
}

void pl_rollout(long B, long T, const double *x0, const double *uff, const double *lo,
                const double *hi, const double *p, const double *w, double *x, double *u, double *J) {
    for (long b = 0; b < B; b++) {
        long o = b * T * NU;
        J[b] = rollout_one(T, x0 + b * NX, uff + o, NULL, 0.0, NULL, NULL, lo ? lo + o : NULL,
                           hi ? hi + o : NULL, p + b * PSTRIDE, w ? w + b * T * NW : NULL,
                           x + b * (T + 1) * NX, u + o);
    }
}

/* Backtracking line search (step 3 of runtime/ilqr.py): each active element takes the first
 * alpha = decay^j with J - J(alpha) >= armijo * -(alpha dV1 + alpha^2 dV2) - slack. */
void pl_line_search(long B, long T, const double *x, const double *u, const double *J,
                    const double *K, const double *k, const double *dV1, const double *dV2,
                    const double *lo, const double *hi, const double *p, const double *w,
                    const uint8_t *active,
                    long steps, double decay, double armijo, double eps,
                    double *x_new, double *u_new, double *J_new, uint8_t *accepted) {
    for (long b = 0; b < B; b++) {
        long ox = b * (T + 1) * NX, ou = b * T * NU;
        J_new[b] = J[b];
        accepted[b] = 0;
        double slack = 10.0 * eps * (fabs(J[b]) > 1.0 ? fabs(J[b]) : 1.0), alpha = 1.0;
        for (long j = 0; active[b] && j < steps; j++, alpha *= decay) {
            double Jt = rollout_one(T, x + ox, u + ou, k + ou, alpha, K + ou * NX, x + ox,
                                    lo ? lo + ou : NULL, hi ? hi + ou : NULL, p + b * PSTRIDE,
                                    w ? w + b * T * NW : NULL, x_new + ox, u_new + ou);
            double predicted = -(alpha * dV1[b] + alpha * alpha * dV2[b]);
            if (J[b] - Jt >= armijo * predicted - slack) {
                J_new[b] = Jt;
                accepted[b] = 1;
                break;
            }
        }
        if (!accepted[b]) {                         /* inactive or rejected: keep (x, u, J) */
            memcpy(x_new + ox, x + ox, (T + 1) * NX * sizeof(double));
            memcpy(u_new + ou, u + ou, T * NU * sizeof(double));
        }
    }
}

/* ------------------------------------------------------------------ derivatives */

/* Step 1: F = [phi_x phi_u], g, C = grad, hess l at every stage; gT, CT of l_T. */
void pl_model(long B, long T, const double *x, const double *u, const double *p, const double *w,
              double *F, double *g, double *C, double *gT, double *CT) {
    D1 xd[NX], ud[NU], xn[NX];
    D2 xh[NX], uh[NU];
    for (long b = 0; b < B; b++) {
        const double *pb = p + b * PSTRIDE;
        for (long t = 0; t < T; t++) {
            const double *xt = x + (b * (T + 1) + t) * NX, *ut = u + (b * T + t) * NU;
            long s = b * T + t;
            for (int i = 0; i < NX; i++) { xd[i] = d1_c(xt[i]); xd[i].d[i] = 1.0; xh[i] = d2_c(xt[i]); xh[i].d[i] = 1.0; }
            for (int i = 0; i < NU; i++) { ud[i] = d1_c(ut[i]); ud[i].d[NX + i] = 1.0; uh[i] = d2_c(ut[i]); uh[i].d[NX + i] = 1.0; }
            step_d1(xd, ud, pb, xn);
            for (int i = 0; i < NX; i++) memcpy(F + (s * NX + i) * NZ, xn[i].d, NZ * sizeof(double));
            D2 l = stage_aug_d2(xh, uh, pb, w ? w + s * NW : NULL);
            memcpy(g + s * NZ, l.d, NZ * sizeof(double));
            memcpy(C + s * NZ * NZ, l.h, NZ * NZ * sizeof(double));
        }
        const double *xT = x + (b * (T + 1) + T) * NX;
        for (int i = 0; i < NX; i++) { xh[i] = d2_c(xT[i]); xh[i].d[i] = 1.0; }
        D2 l = final_d2(xh, pb);
        for (int i = 0; i < NX; i++) {
            gT[b * NX + i] = l.d[i];
            for (int j = 0; j < NX; j++) CT[(b * NX + i) * NX + j] = l.h[i * NZ + j];
        }
    }
}

/* The dynamics curvature of the Newton model: sum_i lam_i hess phi_i at every stage, with the
 * costates lam (B, T, NX) of x_{t+1} (runtime/ilqr_derivatives.py TrajectoryFunctions.curvature). */
void pl_curvature(long B, long T, const double *x, const double *u, const double *p,
                  const double *lam, double *out) {
    D2 xh[NX], uh[NU], xn[NX];
    for (long b = 0; b < B; b++)
        for (long t = 0; t < T; t++) {
            const double *xt = x + (b * (T + 1) + t) * NX, *ut = u + (b * T + t) * NU;
            long s = b * T + t;
            for (int i = 0; i < NX; i++) { xh[i] = d2_c(xt[i]); xh[i].d[i] = 1.0; }
            for (int i = 0; i < NU; i++) { uh[i] = d2_c(ut[i]); uh[i].d[NX + i] = 1.0; }
            step_d2(xh, uh, p + b * PSTRIDE, xn);
            double *o = out + s * NZ * NZ;
            memset(o, 0, NZ * NZ * sizeof(double));
            for (int i = 0; i < NX; i++)
                for (int k = 0; k < NZ * NZ; k++) o[k] += lam[s * NX + i] * xn[i].h[k];
        }
}

/* ------------------------------------------------------------------ small dense algebra */

/* Lower Cholesky factor of the m x m matrix A (leading dimension NU); 0 unless positive definite. */
static int cholesky(int m, const double *A, double *L) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j <= i; j++) {
            double s = A[i * NU + j];
            for (int k = 0; k < j; k++) s -= L[i * NU + k] * L[j * NU + k];
            if (i == j) {
                if (!(s > 0.0) || !isfinite(s)) return 0;
                L[i * NU + i] = sqrt(s);
            } else {
                L[i * NU + j] = s / L[j * NU + j];
            }
        }
    return 1;
}

/* b <- (L L')^{-1} b */
static void cholesky_solve(int m, const double *L, double *b) {
    for (int i = 0; i < m; i++) {
        for (int k = 0; k < i; k++) b[i] -= L[i * NU + k] * b[k];
        b[i] /= L[i * NU + i];
    }
    for (int i = m - 1; i >= 0; i--) {
        for (int k = i + 1; k < m; k++) b[i] -= L[k * NU + i] * b[k];
        b[i] /= L[i * NU + i];
    }
}

/* Hinv = (L L')^{-1} on the rows and columns idx[0..nf) (leading dimension NU) */
static void embed_inverse(int nf, const int *idx, const double *L, double *Hinv) {
    memset(Hinv, 0, NU * NU * sizeof(double));
    for (int e = 0; e < nf; e++) {
        double col[NU];
        for (int a = 0; a < nf; a++) col[a] = a == e;
        cholesky_solve(nf, L, col);
        for (int a = 0; a < nf; a++) Hinv[idx[a] * NU + idx[e]] = col[a];
    }
}

/* The free block H_ff of the coordinates with free[i] (indices to idx); returns its size. */
static int free_block(const double *H, const int *free_, int *idx, double *A) {
    int nf = 0;
    for (int i = 0; i < NU; i++) if (free_[i]) idx[nf++] = i;
    for (int a = 0; a < nf; a++)
        for (int e = 0; e < nf; e++) A[a * NU + e] = H[idx[a] * NU + idx[e]];
    return nf;
}

static double objective(const double *H, const double *q, const double *x) {
    double f = 0.0;
    for (int i = 0; i < NU; i++) {
        double Hx = 0.0;
        for (int j = 0; j < NU; j++) Hx += H[i * NU + j] * x[j];
        f += (0.5 * Hx + q[i]) * x[i];
    }
    return f;
}

/* Options of the projected-Newton box QP (runtime/box_qp.py BoxQPOptions) */
typedef struct { long max_iters; double tol, armijo, decay; long steps; } QPOptions;

/* NU > 3: projected Newton (runtime/box_qp.py, Tassa et al. 2014 Algorithm 3) from the clamped
 * unconstrained minimizer; returns 1 for SOLVED or MAX_ITERS, 0 for NOT_CONVEX or NUMERICAL. */
static int box_qp_newton(const double *H, const double *q, const double *lo, const double *hi,
                         int finite, const QPOptions *o, double *x, double *Hinv) {
    double L[NU * NU], A[NU * NU], g[NU], d[NU], cand[NU], best[NU];
    int idx[NU], free_[NU], clamped[NU], prev[NU], all[NU], pd, inside = 1, exact = 0;
    for (int i = 0; i < NU; i++) all[i] = 1;
    pd = cholesky(NU, H, L);
    for (int i = 0; i < NU; i++) x[i] = -q[i];
    if (pd) cholesky_solve(NU, L, x);
    for (int i = 0; i < NU; i++) inside &= pd && lo[i] < x[i] && x[i] < hi[i];
    if (inside) {
        free_block(H, all, idx, A);
        embed_inverse(NU, idx, L, Hinv);
        return finite;
    }
    if (!finite) return 0;
    double scale = 1.0;
    for (int i = 0; i < NU; i++) {
        if (!pd) x[i] = 0.0;
        x[i] = x[i] < lo[i] ? lo[i] : (x[i] > hi[i] ? hi[i] : x[i]);
        scale = fabs(q[i]) > scale ? fabs(q[i]) : scale;
        prev[i] = 0;
    }
    int nf = 0;
    for (long it = 0;; it++) {
        double gmax = 0.0;
        int same = 1;
        for (int i = 0; i < NU; i++) {
            g[i] = q[i];
            for (int j = 0; j < NU; j++) g[i] += H[i * NU + j] * x[j];
            clamped[i] = (x[i] <= lo[i] && g[i] > 0) || (x[i] >= hi[i] && g[i] < 0);
            free_[i] = !clamped[i];
            same &= clamped[i] == prev[i];
            if (free_[i] && fabs(g[i]) > gmax) gmax = fabs(g[i]);
        }
        nf = free_block(H, free_, idx, A);
        if (!cholesky(nf, A, L)) return 0;                            /* NOT_CONVEX */
        if (gmax <= o->tol * scale || (exact && same) || it == o->max_iters) break;
        double r[NU];
        for (int a = 0; a < nf; a++) r[a] = -g[idx[a]];
        cholesky_solve(nf, L, r);
        memset(d, 0, sizeof d);
        for (int a = 0; a < nf; a++) d[idx[a]] = r[a];
        double f0 = objective(H, q, x), s = 1.0;
        long j, accepted = -1;
        for (j = 0; j < o->steps; j++, s *= o->decay) {
            double predicted = 0.0;
            for (int i = 0; i < NU; i++) {
                double v = x[i] + s * d[i];
                cand[i] = v < lo[i] ? lo[i] : (v > hi[i] ? hi[i] : v);
                predicted += g[i] * (x[i] - cand[i]);
            }
            if (predicted > 0 && f0 - objective(H, q, cand) >= o->armijo * predicted) {
                accepted = j;
                memcpy(best, cand, sizeof best);
                break;
            }
        }
        if (accepted < 0) break;                                      /* stuck: MAX_ITERS */
        memcpy(x, best, sizeof best);
        exact = accepted == 0;
        for (int i = 0; i < NU; i++) {
            exact &= (lo[i] < x[i] && x[i] < hi[i]) || d[i] == 0;
            prev[i] = clamped[i];
        }
    }
    embed_inverse(nf, idx, L, Hinv);
    return 1;
}

/* The box QP  min 1/2 k'Hk + q'k, lo <= k <= hi  (runtime/box_qp.py): one control in closed
 * form; NU <= 3 the least-objective feasible face minimizer over the 3^NU faces; more controls
 * by projected Newton. Writes k and Hinv = H_ff^{-1} on the free rows and columns (0
 * elsewhere); returns 1 where the data are finite and H is positive definite (NU <= 3: the
 * all-free face factors; projected Newton: every free block it factors). */
static int box_qp(const double *H, const double *q, const double *lo, const double *hi,
                  const QPOptions *o, double *k, double *Hinv) {
    int finite = 1;
    for (int i = 0; i < NU; i++) {
        finite &= isfinite(q[i]);
        for (int j = 0; j < NU; j++) finite &= isfinite(H[i * NU + j]);
    }
    if (NU > 3) return box_qp_newton(H, q, lo, hi, finite, o, k, Hinv);
    if (NU == 1) {
        double h = H[0], v = h > 0 ? -q[0] / h : 0.0;
        v = v < lo[0] ? lo[0] : (v > hi[0] ? hi[0] : v);
        k[0] = v;
        Hinv[0] = (lo[0] < v && v < hi[0] && h > 0) ? 1.0 / h : 0.0;
        return finite && h > 0;
    }
    int faces = 1, best = -1, convex = 0;
    for (int i = 0; i < NU; i++) faces *= 3;
    double best_obj = INFINITY, L[NU * NU], best_L[NU * NU], xf[NU], best_x[NU];
    int free_[NU], best_free[NU];
    memset(best_free, 0, sizeof best_free);
    memset(best_x, 0, sizeof best_x);
    for (int f = 0; f < faces; f++) {
        int idx[NU], nf = 0, ok = 1, code = f;
        double value[NU], A[NU * NU], rhs[NU];
        for (int i = NU - 1; i >= 0; i--, code /= 3) {          /* first coordinate slowest */
            int side = code % 3 - 1;
            free_[i] = side == 0;
            value[i] = side < 0 ? lo[i] : (side > 0 ? hi[i] : 0.0);
            if (!isfinite(value[i])) { ok = 0; value[i] = 0.0; }
        }
        for (int i = 0; i < NU; i++) if (free_[i]) idx[nf++] = i;
        for (int a = 0; a < nf; a++) {
            double r = q[idx[a]];
            for (int c = 0; c < NU; c++) if (!free_[c]) r += H[idx[a] * NU + c] * value[c];
            rhs[a] = -r;
            for (int e = 0; e < nf; e++) A[a * NU + e] = H[idx[a] * NU + idx[e]];
        }
        int factored = cholesky(nf, A, L);
        if (nf == NU) convex = factored;
        if (!factored || !ok) continue;
        cholesky_solve(nf, L, rhs);
        for (int i = 0; i < NU; i++) xf[i] = value[i];
        for (int a = 0; a < nf; a++) xf[idx[a]] = rhs[a];
        int feasible = 1;
        for (int i = 0; i < NU; i++) feasible &= lo[i] <= xf[i] && xf[i] <= hi[i];
        if (!feasible) continue;
        double obj = 0.0;
        for (int i = 0; i < NU; i++) {
            double Hx = 0.0;
            for (int j = 0; j < NU; j++) Hx += H[i * NU + j] * xf[j];
            obj += (0.5 * Hx + q[i]) * xf[i];
        }
        if (obj < best_obj) {
            best_obj = obj;
            best = f;
            memcpy(best_x, xf, sizeof xf);
            memcpy(best_free, free_, sizeof free_);
            memcpy(best_L, L, sizeof L);
        }
    }
    memcpy(k, best_x, sizeof best_x);
    memset(Hinv, 0, NU * NU * sizeof(double));
    if (best >= 0) {
        int idx[NU], nf = 0;
        for (int i = 0; i < NU; i++) if (best_free[i]) idx[nf++] = i;
        embed_inverse(nf, idx, best_L, Hinv);
    }
    return finite && convex;
}

/* ------------------------------------------------------------------ backward pass */

/* Step 2 of runtime/ilqr.py for the elements with todo[b], each with its regularization mu[b]:
 *   Q_x = g_x + F_x'v,  Q_u = g_u + F_u'v,  Q_xx = C_xx + F_x'V F_x,  Q_ux = C_ux + F_u'V F_x,
 *   Q_uu = C_uu + F_u'V F_u;  k = argmin of the box QP on Q_uu + mu I, K = -(..)_ff^{-1} Q_ux;
 *   V <- Q_xx + Q_xu K + K'Q_ux + K'Q_uu K,  v <- Q_x + Q_xu k + K'Q_u + K'Q_uu k,
 * dV1 = sum k'Q_u, dV2 = 1/2 sum k'Q_uu k; ok[b] = every Q_uu + mu I positive definite. */
void pl_backward(long B, long T, const double *F, const double *g, const double *C,
                 const double *gT, const double *CT, const double *u, const double *lo,
                 const double *hi, const double *mu, const uint8_t *todo, long qp_iters,
                 double qp_tol, double qp_armijo, double qp_decay, long qp_steps,
                 double *K, double *k, double *dV1, double *dV2, uint8_t *ok) {
    QPOptions qp_options = {qp_iters, qp_tol, qp_armijo, qp_decay, qp_steps}, *qp = &qp_options;
    double V[NX * NX], v[NX], VF[NX * NZ], Q[NZ * NZ], q[NZ], H[NU * NU], L[NU * NU];
    double Hinv[NU * NU], ks[NU], Ks[NU * NX], lo_s[NU], hi_s[NU];
    for (long b = 0; b < B; b++) {
        if (!todo[b]) continue;
        memcpy(V, CT + b * NX * NX, sizeof V);
        memcpy(v, gT + b * NX, sizeof v);
        double d1 = 0.0, d2 = 0.0;
        int good = 1;
        for (long t = T - 1; t >= 0; t--) {
            long s = b * T + t;
            const double *Ft = F + s * NX * NZ, *gt = g + s * NZ, *Ct = C + s * NZ * NZ;
            /* Q = C + F'V F, q = g + F'v over z = (x, u) */
            for (int i = 0; i < NX; i++)
                for (int j = 0; j < NZ; j++) {
                    double a = 0.0;
                    for (int r = 0; r < NX; r++) a += V[i * NX + r] * Ft[r * NZ + j];
                    VF[i * NZ + j] = a;
                }
            for (int i = 0; i < NZ; i++) {
                double a = gt[i];
                for (int r = 0; r < NX; r++) a += Ft[r * NZ + i] * v[r];
                q[i] = a;
                for (int j = 0; j < NZ; j++) {
                    double c = Ct[i * NZ + j];
                    for (int r = 0; r < NX; r++) c += Ft[r * NZ + i] * VF[r * NZ + j];
                    Q[i * NZ + j] = c;
                }
            }
            for (int i = 0; i < NU; i++)
                for (int j = 0; j < NU; j++)
                    H[i * NU + j] = Q[(NX + i) * NZ + NX + j] + (i == j ? mu[b] : 0.0);
            const double *qu = q + NX;
            int stage_ok, solved = 0;
            if (lo) {
                for (int i = 0; i < NU; i++) {
                    lo_s[i] = lo[s * NU + i] - u[s * NU + i];
                    hi_s[i] = hi[s * NU + i] - u[s * NU + i];
                }
            }
            if (!lo || NU > 1) {
                stage_ok = cholesky(NU, H, L);
                if (stage_ok) {
                    int inside = 1;
                    for (int i = 0; i < NU; i++) ks[i] = -qu[i];
                    cholesky_solve(NU, L, ks);
                    for (int i = 0; i < NU; i++) inside &= !lo || (lo_s[i] < ks[i] && ks[i] < hi_s[i]);
                    if (inside) {
                        int idx[NU];
                        for (int a = 0; a < NU; a++) idx[a] = a;
                        embed_inverse(NU, idx, L, Hinv);
                        solved = 1;
                    }
                } else if (!lo) {
                    for (int i = 0; i < NU; i++) ks[i] = -qu[i];     /* identity in place of H^-1 */
                    for (int i = 0; i < NU * NU; i++) Hinv[i] = i % (NU + 1) == 0;
                    solved = 1;
                }
            }
            if (!solved) stage_ok = box_qp(H, qu, lo_s, hi_s, qp, ks, Hinv);
            good &= stage_ok;
            /* K = -Hinv Q_ux */
            for (int i = 0; i < NU; i++)
                for (int j = 0; j < NX; j++) {
                    double a = 0.0;
                    for (int r = 0; r < NU; r++) a -= Hinv[i * NU + r] * Q[(NX + r) * NZ + j];
                    Ks[i * NX + j] = a;
                }
            /* value function update */
            double QuuK[NU * NX], Quuk[NU], nV[NX * NX], nv[NX];
            for (int i = 0; i < NU; i++) {
                double a = 0.0;
                for (int r = 0; r < NU; r++) a += Q[(NX + i) * NZ + NX + r] * ks[r];
                Quuk[i] = a;
                for (int j = 0; j < NX; j++) {
                    double c = 0.0;
                    for (int r = 0; r < NU; r++) c += Q[(NX + i) * NZ + NX + r] * Ks[r * NX + j];
                    QuuK[i * NX + j] = c;
                }
                d1 += ks[i] * qu[i];
                d2 += 0.5 * ks[i] * Quuk[i];
            }
            for (int i = 0; i < NX; i++) {
                double a = q[i];
                for (int r = 0; r < NU; r++)
                    a += Q[i * NZ + NX + r] * ks[r] + Ks[r * NX + i] * (qu[r] + Quuk[r]);
                nv[i] = a;
                for (int j = 0; j < NX; j++) {
                    double c = Q[i * NZ + j];
                    for (int r = 0; r < NU; r++)
                        c += Q[i * NZ + NX + r] * Ks[r * NX + j] + Ks[r * NX + i] * Q[(NX + r) * NZ + j]
                             + Ks[r * NX + i] * QuuK[r * NX + j];
                    nV[i * NX + j] = c;
                }
            }
            for (int i = 0; i < NX; i++)
                for (int j = 0; j < NX; j++) V[i * NX + j] = 0.5 * (nV[i * NX + j] + nV[j * NX + i]);
            memcpy(v, nv, sizeof v);
            memcpy(K + s * NU * NX, Ks, sizeof Ks);
            memcpy(k + s * NU, ks, sizeof ks);
        }
        dV1[b] = d1;
        dV2[b] = d2;
        ok[b] = good;
    }
}
